package pool

import (
	"cmp"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/internal/sqlcomment"
	"github.com/pgsidecar/pgsidecar/internal/sqlnorm"
)

// windowSlots is how many slots the sliding window is cut into: a statement's time leaves the
// window one slot (a tenth of it) at a time.
const windowSlots = 10

// maxTexts is the size of the cache of raw statement texts already fingerprinted (a power of
// two).
const maxTexts = 4096

// statements measures statements by fingerprint and exports the top ones by total time over a
// sliding window. Memory and series are bounded whatever the workload: it keeps at most
// capacity statements (a few times top), evicting the one with the least time in the window to
// make room, and a fixed cache of maxTexts raw texts. A statement is fingerprinted once per
// distinct text; an execution of a text already seen costs a hash of the text, a cache slot
// and the histogram observation, without allocating.
type statements struct {
	top        int
	capacity   int
	slot       time.Duration // window / windowSlots
	textLength int
	scrub      func(string) string
	now        func() time.Time // time.Now; tests move it

	duration *prometheus.HistogramVec // children of tracked statements only; exported for the top ones
	errors   *prometheus.CounterVec
	info     *prometheus.Desc

	seed    maphash.Seed
	mu      sync.Mutex
	texts   *[maxTexts]statementText // direct-mapped by the hash of the text
	tracked map[fingerprint.Fingerprint]*statement
}

// statementText is one raw text already fingerprinted, found by the hash of the text (key); the
// length is checked too, so that a wrong match needs a 64-bit collision of equal-length texts. A
// new text takes the slot of whatever text was there.
type statementText struct {
	key     uint64
	n       int
	fp      fingerprint.Fingerprint
	unshown bool       // the text cannot be normalised
	stmt    *statement // the tracked statement, when last looked at
}

// statement is one tracked fingerprint.
type statement struct {
	fp    fingerprint.Fingerprint
	label string
	op    Operation
	text  string
	hist  prometheus.Histogram
	errs  map[string]prometheus.Counter // by sqlstate label
	// exemplars limits hist's exemplars; after eviction, a racing caller may still use it.
	exemplars exemplarLimit
	slots     [windowSlots]windowSlot
	last      int64 // index of the newest slot
	evicted   bool
}

type windowSlot struct {
	seconds float64
	calls   uint64
}

func newStatements(labels prometheus.Labels, cfg Config, scrub func(string) string) *statements {
	return &statements{
		top:        cfg.StatementsTop,
		capacity:   max(4*cfg.StatementsTop, 64),
		slot:       cfg.StatementsWindow / windowSlots,
		textLength: cfg.StatementsTextLength,
		scrub:      scrub,
		now:        time.Now,
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:                            "pgsidecar_statement_duration_seconds",
			Help:                            "Duration of the top statements by total time over the statements window, by fingerprint (see pgsidecar_statement_info) and operation.",
			ConstLabels:                     labels,
			Buckets:                         queryBuckets,
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  100,
			NativeHistogramMinResetDuration: time.Hour,
		}, []string{"fingerprint", "operation"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "pgsidecar_statement_errors_total",
			Help:        "Executions of the top statements that ended in an error, by fingerprint and SQLSTATE (labelled as in pgsidecar_query_errors_total).",
			ConstLabels: labels,
		}, []string{"fingerprint", "sqlstate"}),
		info: prometheus.NewDesc("pgsidecar_statement_info",
			"The normalised text (constants as $n) of each top statement's fingerprint; always 1.",
			[]string{"fingerprint", "text"}, labels),
		seed:    maphash.MakeSeed(),
		texts:   new([maxTexts]statementText),
		tracked: map[fingerprint.Fingerprint]*statement{},
	}
}

// record measures one execution of sql and returns its fingerprint. With a valid id, sql may be
// the first bytes of the statement only: id names the whole text.
func (s *statements) record(op Operation, sql string, id StatementID, tr sqlcomment.Trace, d time.Duration, err error) fingerprint.Fingerprint {
	now := s.slotOf(s.now())
	var st *statement
	if id.fp != 0 {
		s.mu.Lock()
		if st = s.tracked[id.fp]; st == nil {
			s.mu.Unlock()
			text := s.shownText(op, sql, id.unshown, len(sql) < id.n)
			s.mu.Lock()
			if st = s.tracked[id.fp]; st == nil {
				st = s.admit(id.fp, text, op, now)
			}
		}
	} else {
		st = s.lookup(op, sql, now)
	}
	st.add(now, d)
	hist := st.hist
	var errCounter prometheus.Counter
	if err != nil {
		label := sqlStateLabel(err)
		errCounter = st.errs[label]
		if errCounter == nil {
			errCounter = s.errors.WithLabelValues(st.label, label)
			st.errs[label] = errCounter
		}
	}
	fp := st.fp
	s.mu.Unlock()
	observe(hist, &st.exemplars, d.Seconds(), tr)
	if errCounter != nil {
		errCounter.Inc()
	}
	return fp
}

// lookup returns the tracked statement of the whole text sql, admitting it if need be. It
// returns with s.mu held.
func (s *statements) lookup(op Operation, sql string, now int64) *statement {
	sql, _ = sqlcomment.Split(sql) // each request's comment is not a new text
	key := maphash.String(s.seed, sql)
	s.mu.Lock()
	t := &s.texts[key%maxTexts]
	if t.key != key || t.n != len(sql) || t.fp == 0 {
		// Lexing takes a while: not under the lock.
		s.mu.Unlock()
		fp, lexErr := fingerprint.Sum(sql)
		if lexErr != nil {
			fp = fingerprint.Unnormalisable(op.String())
		}
		s.mu.Lock()
		*t = statementText{key: key, n: len(sql), fp: fp, unshown: lexErr != nil}
	}
	fp, st := t.fp, t.stmt
	if st == nil || st.evicted {
		if st = s.tracked[fp]; st == nil {
			// A new statement: its text is needed now. Normalising and scrubbing take a
			// while and allocate: not under the lock, where another text may take slot t.
			unshown := t.unshown
			s.mu.Unlock()
			text := s.shownText(op, sql, unshown, false)
			s.mu.Lock()
			if st = s.tracked[fp]; st == nil {
				st = s.admit(fp, text, op, now)
			}
		}
		if t.key == key && t.fp == fp {
			t.stmt = st
		}
	}
	return st
}

// StatementID names a statement by its whole text, for a front end that keeps only the first
// bytes of long statements (see Manager.Identify): two statements that differ only after those
// bytes are two statements. The zero value names nothing; the statement is then named by the
// text recorded with it.
type StatementID struct {
	fp      fingerprint.Fingerprint
	n       int  // the length of the whole text
	unshown bool // the whole text cannot be normalised
	// trace is the trace context of the text's sqlcommenter comment: the exemplar of the
	// execution that the text came with.
	trace sqlcomment.Trace
}

// Untraced is id without its trace context: the statement, for later executions.
func (id StatementID) Untraced() StatementID {
	id.trace = sqlcomment.Trace{}
	return id
}

// Traced reports whether id carries a trace context for an exemplar.
func (id StatementID) Traced() bool { return id.trace.Valid() }

// TracedAs returns id with the trace context of prev when id has none and both name the same
// statement: a Bind of a statement keeps the trace of the Parse before it in the same batch.
func (id StatementID) TracedAs(prev StatementID) StatementID {
	if !id.trace.Valid() && id.fp == prev.fp {
		id.trace = prev.trace
	}
	return id
}

// Fingerprint returns the statement's fingerprint label, or "" for the zero StatementID.
func (id StatementID) Fingerprint() string {
	if id.fp == 0 {
		return ""
	}
	return id.fp.String()
}

// Identify names the statement whose whole text is sql, for RecordStatement, with the trace
// context of its sqlcommenter comment (which is not part of the name). A text already seen
// costs a hash of it and a cache slot, without allocating. With statement measurement off it
// returns a StatementID with the trace context only.
func (m *Manager) Identify(op Operation, sql []byte) StatementID {
	n := len(sql)
	sql, tr := sqlcomment.SplitBytes(sql)
	s := m.metrics.stmts
	if s == nil {
		return StatementID{trace: tr}
	}
	key := maphash.Bytes(s.seed, sql)
	s.mu.Lock()
	t := &s.texts[key%maxTexts]
	if t.key == key && t.n == len(sql) && t.fp != 0 {
		id := StatementID{fp: t.fp, n: n, unshown: t.unshown, trace: tr}
		s.mu.Unlock()
		return id
	}
	s.mu.Unlock()
	// Sum keeps nothing of the text: no copy of a large statement for it.
	fp, lexErr := fingerprint.Sum(unsafe.String(unsafe.SliceData(sql), len(sql)))
	if lexErr != nil {
		fp = fingerprint.Unnormalisable(op.String())
	}
	s.mu.Lock()
	*t = statementText{key: key, n: len(sql), fp: fp, unshown: lexErr != nil}
	s.mu.Unlock()
	return StatementID{fp: fp, n: n, unshown: lexErr != nil, trace: tr}
}

func (s *statements) slotOf(t time.Time) int64 { return t.UnixNano() / int64(s.slot) }

// shownText is the text of the info series: normalised, scrubbed and truncated. Text that
// cannot be normalised is never shown. A cut text is the first bytes of a longer statement,
// which may end inside a token.
func (s *statements) shownText(op Operation, sql string, unshown, cut bool) string {
	normalize := sqlnorm.Normalize
	if cut {
		normalize = sqlnorm.NormalizePrefix
	}
	text, err := normalize(sql)
	if unshown || err != nil {
		return "(not shown: " + strings.ToUpper(op.String()) + " statement that cannot be normalised)"
	}
	return truncateSQL(s.scrub(text), s.textLength)
}

// admit starts tracking fingerprint fp, evicting the tracked statement with the least time in
// the window when full.
func (s *statements) admit(fp fingerprint.Fingerprint, text string, op Operation, now int64) *statement {
	if len(s.tracked) >= s.capacity {
		var victim *statement
		var vs float64
		var vc uint64
		for _, st := range s.tracked {
			sec, calls := st.window(now)
			if victim == nil || sec < vs || sec == vs && calls < vc {
				victim, vs, vc = st, sec, calls
			}
		}
		s.evict(victim)
	}
	label := fp.String()
	st := &statement{fp: fp, label: label, op: op, text: text, last: now,
		hist: s.duration.WithLabelValues(label, op.String()).(prometheus.Histogram),
		errs: map[string]prometheus.Counter{}}
	s.tracked[fp] = st
	return st
}

func (s *statements) evict(st *statement) {
	st.evicted = true
	delete(s.tracked, st.fp)
	s.duration.DeleteLabelValues(st.label, st.op.String())
	for label := range st.errs {
		s.errors.DeleteLabelValues(st.label, label)
	}
	// Cached texts may point here until they are looked up again: keep them small.
	st.hist, st.errs = nil, nil
}

// add counts one execution of d in slot now.
func (st *statement) add(now int64, d time.Duration) {
	if now > st.last {
		for i := st.last + 1; i <= now && i <= st.last+windowSlots; i++ {
			st.slots[i%windowSlots] = windowSlot{}
		}
		st.last = now
	}
	// A slot older than the newest (a racing caller's clock read) counts in the newest.
	sl := &st.slots[st.last%windowSlots]
	sl.seconds += d.Seconds()
	sl.calls++
}

// window returns the time and executions of the window that ends with slot now.
func (st *statement) window(now int64) (seconds float64, calls uint64) {
	for k := range int64(windowSlots) {
		i := st.last - k
		if i <= now-windowSlots {
			break
		}
		seconds += st.slots[i%windowSlots].seconds
		calls += st.slots[i%windowSlots].calls
	}
	return seconds, calls
}

// ranked is one of the top statements at one moment.
type ranked struct {
	st            *statement
	hist          prometheus.Histogram // st's, read under the lock: eviction clears it
	windowSeconds float64
	windowCalls   uint64
	errs          []prometheus.Counter
	errLabels     []string
}

// topN returns the top statements by time in the window, most first; statements with no
// execution in the window are left out, and forgotten.
func (s *statements) topN() []ranked {
	now := s.slotOf(s.now())
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]ranked, 0, len(s.tracked))
	for _, st := range s.tracked {
		sec, calls := st.window(now)
		if calls == 0 {
			s.evict(st)
			continue
		}
		list = append(list, ranked{st: st, hist: st.hist, windowSeconds: sec, windowCalls: calls})
	}
	slices.SortFunc(list, func(a, b ranked) int {
		if c := cmp.Compare(b.windowSeconds, a.windowSeconds); c != 0 {
			return c
		}
		if c := cmp.Compare(b.windowCalls, a.windowCalls); c != 0 {
			return c
		}
		return cmp.Compare(a.st.label, b.st.label)
	})
	list = list[:min(len(list), s.top)]
	for i := range list {
		for label, c := range list[i].st.errs {
			list[i].errLabels = append(list[i].errLabels, label)
			list[i].errs = append(list[i].errs, c)
		}
	}
	return list
}

func (s *statements) describe(ch chan<- *prometheus.Desc) {
	s.duration.Describe(ch)
	s.errors.Describe(ch)
	ch <- s.info
}

// collect sends the series of the top statements only: one that drops out stops being
// exported.
func (s *statements) collect(ch chan<- prometheus.Metric) {
	for _, r := range s.topN() {
		ch <- r.hist
		for _, c := range r.errs {
			ch <- c
		}
		ch <- prometheus.MustNewConstMetric(s.info, prometheus.GaugeValue, 1, r.st.label, r.st.text)
	}
}

// StatementStats is one of the top statements by total time over the statements window
// (Config.StatementsWindow), as measured by the pool: library and proxied traffic alike.
type StatementStats struct {
	Fingerprint   string            // 16 hex digits, the fingerprint label of the statement metrics
	Operation     string            // the operation label
	Text          string            // normalised (constants as $n), truncated to StatementsTextLength
	Calls         uint64            // executions since the statement was last admitted to the tracked set
	Errors        uint64            // of those, the ones that failed
	ErrorsByState map[string]uint64 // failures by sqlstate label
	TotalSeconds  float64           // their total time
	WindowCalls   uint64            // executions in the window
	WindowSeconds float64           // time in the window: what the ranking uses
	P50, P95, P99 time.Duration     // from the classic buckets of its histogram
	Histogram     QueryHistogram    // its classic buckets (cumulative counts on QueryHistogram.Bounds)
}

// Statements returns the top statements by total time over the statements window, most first;
// nil when statement measurement is off (StatementsTop 0).
func (m *Manager) Statements() []StatementStats {
	s := m.metrics.stmts
	if s == nil {
		return nil
	}
	top := s.topN()
	out := make([]StatementStats, 0, len(top))
	for _, r := range top {
		var pb dto.Metric
		if r.hist.Write(&pb) != nil {
			continue
		}
		h := pb.GetHistogram()
		qh := QueryHistogram{Cumulative: make([]uint64, len(queryBuckets)), Count: h.GetSampleCount(), SumSeconds: h.GetSampleSum()}
		for i, b := range h.GetBucket() {
			if i < len(qh.Cumulative) {
				qh.Cumulative[i] = b.GetCumulativeCount()
			}
		}
		byState := map[string]uint64{}
		for i, c := range r.errs {
			n := counterValue(c)
			byState[r.errLabels[i]] += n
			qh.Errors += n
		}
		out = append(out, StatementStats{
			Fingerprint: r.st.label, Operation: r.st.op.String(), Text: r.st.text,
			Calls: qh.Count, Errors: qh.Errors, ErrorsByState: byState, TotalSeconds: qh.SumSeconds,
			WindowCalls: r.windowCalls, WindowSeconds: r.windowSeconds,
			P50: seconds(qh.Quantile(0.50)), P95: seconds(qh.Quantile(0.95)), P99: seconds(qh.Quantile(0.99)),
			Histogram: qh,
		})
	}
	return out
}
