package api

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// event is one Server-Sent Event.
type event struct {
	id   int
	data string
}

// sseClient reads events from a live-metrics stream.
type sseClient struct {
	resp   *http.Response
	rd     *bufio.Reader
	cancel context.CancelFunc
}

func (s *sidecar) openStream(t testing.TB) *sseClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.srv.URL+"/api/database/live-metrics", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "text/event-stream")
	resp, err := s.srv.Client().Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &sseClient{resp: resp, rd: bufio.NewReader(resp.Body), cancel: cancel}
	t.Cleanup(c.close)
	return c
}

func (c *sseClient) close() {
	c.cancel()
	_ = c.resp.Body.Close()
}

// next reads the next event that carries data, skipping the retry hint.
func (c *sseClient) next() (event, error) {
	var ev event
	for {
		line, err := c.rd.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "":
			if ev.data != "" {
				return ev, nil
			}
		case strings.HasPrefix(line, "id: "):
			ev.id, _ = strconv.Atoi(line[4:])
		case strings.HasPrefix(line, "data: "):
			ev.data += line[6:]
		}
	}
}

func (c *sseClient) snapshot(t testing.TB) (int, LiveSnapshot) {
	t.Helper()
	ev, err := c.next()
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	var s LiveSnapshot
	if err := json.Unmarshal([]byte(ev.data), &s); err != nil {
		t.Fatalf("event %d: %v\n%s", ev.id, err, ev.data)
	}
	return ev.id, s
}

// openStreams is how many stream handlers are running.
func (s *sidecar) openStreams() int { return len(s.h.streams) }

func TestLiveStreamDeliversSnapshots(t *testing.T) {
	s := startSidecar(t, testConfig(t), false, func(c *Config) { c.StreamInterval = 20 * time.Millisecond; c.Window = 5 * time.Second })
	s.waitHealthy(t)
	c := s.openStream(t)
	if ct := c.resp.Header.Get("Content-Type"); c.resp.StatusCode != 200 || ct != "text/event-stream; charset=utf-8" {
		t.Fatalf("stream answer: %d %q", c.resp.StatusCode, ct)
	}
	first, err := c.rd.ReadString('\n')
	if err != nil || first != "retry: 2000\n" {
		t.Fatalf("first line %q, %v", first, err)
	}
	last := 0
	for range 3 {
		id, snap := c.snapshot(t)
		if id != last+1 || snap.Pool.Name != "api" || snap.Status != pool.StatusHealthy || snap.Pool.MaxConnections != 4 {
			t.Fatalf("event %d after %d: %+v", id, last, snap)
		}
		last = id
	}
	// Queries made now show up in later snapshots, in the totals and the recent window.
	for range 12 {
		if err := s.query(t, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.query(t, "SELECT 1/0"); err == nil {
		t.Fatal("division by zero succeeded")
	}
	seen := false
	for range 200 {
		id, snap := c.snapshot(t)
		if id != last+1 {
			t.Fatalf("event %d after %d", id, last)
		}
		last = id
		if snap.Queries.Total == 13 && snap.Queries.Errors == 1 && snap.Recent.Queries == 13 && snap.Recent.Errors == 1 &&
			snap.Recent.P99Ms > 0 && snap.Recent.QueriesPerSecond > 0 {
			seen = true
			break
		}
	}
	if !seen {
		t.Fatal("the queries never showed in the stream")
	}
	if s.openStreams() != 1 {
		t.Fatalf("open streams %d, want 1", s.openStreams())
	}
	// The client leaves: the handler must notice and return.
	c.close()
	if !pgtest.WaitFor(10*time.Second, func() bool { return s.openStreams() == 0 }) {
		t.Fatal("the stream handler kept running after the client left")
	}
}

func TestLiveStreamEndsOnClose(t *testing.T) {
	s := startSidecar(t, testConfig(t), false, func(c *Config) { c.StreamInterval = 20 * time.Millisecond })
	c := s.openStream(t)
	c.snapshot(t)
	done := make(chan struct{})
	go func() {
		s.h.Close()
		close(done)
	}()
	// The stream ends cleanly: the reader reaches the end of the body.
	for {
		if _, err := c.next(); err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("stream ended with %v, want EOF", err)
			}
			break
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	// After Close, streams are refused but single snapshots still work.
	code, _, body := s.do(t, http.MethodGet, "/api/database/live-metrics", "", "Accept", "text/event-stream")
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "shutting down") {
		t.Fatalf("stream after Close: %d %s", code, body)
	}
	s.getJSON(t, "/api/database/live-metrics", http.StatusOK, &LiveSnapshot{})
}

func TestLiveStreamLimit(t *testing.T) {
	s := startSidecar(t, testConfig(t), false, func(c *Config) { c.StreamInterval = 20 * time.Millisecond; c.MaxStreams = 1 })
	c := s.openStream(t)
	c.snapshot(t)
	code, _, body := s.do(t, http.MethodGet, "/api/database/live-metrics", "", "Accept", "text/event-stream")
	if code != http.StatusServiceUnavailable || !strings.Contains(string(body), "too many") {
		t.Fatalf("second stream over the limit: %d %s", code, body)
	}
	c.close()
	if !pgtest.WaitFor(10*time.Second, func() bool { return s.openStreams() == 0 }) {
		t.Fatal("stream still open")
	}
	c2 := s.openStream(t)
	c2.snapshot(t)
}

// TestWindow checks the recent figures against readings whose deltas are known.
func TestWindow(t *testing.T) {
	w := newWindow(10 * time.Second)
	bounds := pool.QueryHistogram{}.Bounds()
	n := len(bounds)
	hist := func(count, errs uint64, sum float64, upTo float64) pool.QueryHistogram {
		h := pool.QueryHistogram{Cumulative: make([]uint64, n), Count: count, Errors: errs, SumSeconds: sum}
		for i, b := range bounds {
			if b >= upTo {
				h.Cumulative[i] = count
			}
		}
		return h
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	start := t0.Add(-time.Minute)
	// First reading: no base yet, so the window reaches back to the pool's start.
	r := w.recent(t0, start, hist(100, 10, 1, 0.01))
	if r.WindowSeconds != 60 || r.Queries != 100 || r.Errors != 10 || r.ErrorRate != 0.1 {
		t.Fatalf("first window: %+v", r)
	}
	// 50 more queries, all slower (in the 0.1 s bucket).
	h2 := hist(150, 10, 6, 0.1)
	for i, b := range bounds {
		if b >= 0.01 && b < 0.1 {
			h2.Cumulative[i] = 100
		}
	}
	r = w.recent(t0.Add(5*time.Second), start, h2)
	if r.WindowSeconds != 5 || r.Queries != 50 || r.Errors != 0 || r.QueriesPerSecond != 10 || r.AverageMs != 100 {
		t.Fatalf("second window: %+v", r)
	}
	if r.P50Ms != 75 || r.P99Ms != 99.5 {
		t.Fatalf("percentiles of 50 queries between 50 and 100 ms: %+v", r)
	}
	// Much later: readings older than the span are dropped except the newest of them.
	r = w.recent(t0.Add(time.Minute), start, h2)
	if r.Queries != 0 || r.WindowSeconds != 55 || r.P99Ms != 0 {
		t.Fatalf("idle window: %+v", r)
	}
	// The base is the newest reading at least a span old, so the window covers at least a span.
	r = w.recent(t0.Add(time.Minute+2*time.Second), start, h2)
	if r.WindowSeconds != 57 {
		t.Fatalf("window after idling: %+v", r)
	}
}
