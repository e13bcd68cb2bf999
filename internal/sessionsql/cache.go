package sessionsql

import (
	"bytes"
	"sync"

	"github.com/pgsidecar/pgsidecar/internal/sqlcomment"
)

// Cache remembers the Effect of texts seen before, so that a repeated text costs a map lookup.
// It holds at most maxCacheEntries texts of maxCacheBytes in all, starting afresh when full:
// clients choose the texts, so nothing they send may grow it without bound.
type Cache struct {
	mu      sync.RWMutex
	effects map[string]Effect
	bytes   int
}

const (
	maxCacheEntries = 20000
	maxCacheBytes   = 16 << 20
	// maxCachedText is the longest text cached; longer ones are analysed every time.
	maxCachedText = 64 << 10
)

// Analyze returns Analyze(sql) for sql, with a trailing block comment (a sqlcommenter tag that
// changes per request) left out of the cache key, and out of the reading too: a comment does
// nothing.
//
// A text the cache does not hold and that the quick scan clears (the whole text: what the key
// leaves out is a comment only if the key lexes) is not cached: such texts (with
// constants inline) are new every time, and would only push out the repeated ones.
func (c *Cache) Analyze(sql []byte) Effect {
	if t := bytes.TrimLeft(sql, " \t\r\n"); len(t) > 1 && t[0] == '/' && t[1] == '*' {
		sql, _ = sqlcomment.SplitBytes(sql) // a sqlcommenter comment put first
	}
	key := sql[:commentFree(sql)]
	if len(key) <= maxCachedText {
		c.mu.RLock()
		e, ok := c.effects[string(key)]
		c.mu.RUnlock()
		if ok {
			return e
		}
	}
	if certainlyHarmless(sql) {
		return Effect{Statements: 1}
	}
	if len(key) > maxCachedText {
		return Analyze(string(key))
	}
	k := string(key)
	e := Analyze(k)
	c.mu.Lock()
	if c.effects == nil || len(c.effects) >= maxCacheEntries || c.bytes+len(k) > maxCacheBytes {
		c.effects, c.bytes = map[string]Effect{}, 0
	}
	if _, dup := c.effects[k]; !dup {
		c.effects[k] = e
		c.bytes += len(k)
	}
	c.mu.Unlock()
	return e
}

// commentFree returns the length of sql without its trailing /* ... */ comment, if it ends in
// one that opens at its last "/*" and closes only at its very end. Where that "/*" is not a
// comment's start after all (it stands in a string), the text before it cannot be lexed and
// Analyze pins, which is the safe side.
func commentFree(sql []byte) int {
	s := bytes.TrimRight(sql, " \t\r\n;")
	if !bytes.HasSuffix(s, []byte("*/")) {
		return len(sql)
	}
	open := bytes.LastIndex(s, []byte("/*"))
	if open < 0 || open+4 > len(s) || bytes.Index(s[open+2:], []byte("*/")) != len(s)-open-4 {
		return len(sql)
	}
	return open
}
