package proxy

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// memSplit is the process's memory by kind, from runtime/metrics, and its resident set.
type memSplit struct {
	goroutines int
	stacks     float64 // goroutine stacks in use
	heapLive   float64 // heap objects (live, and dead ones not yet swept)
	heapSlack  float64 // heap spans free or unused: what the GC keeps for the next allocations
	released   float64 // heap returned to the OS
	other      float64 // runtime metadata, buffers, OS thread stacks
	total      float64 // all the runtime mapped, less what it released
	rss        float64 // VmRSS
}

var memMetrics = []string{
	"/sched/goroutines:goroutines",
	"/memory/classes/heap/stacks:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
	"/memory/classes/heap/unused:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/total:bytes",
}

func readMemSplit(t testing.TB) memSplit {
	t.Helper()
	s := make([]rtmetrics.Sample, len(memMetrics))
	for i, n := range memMetrics {
		s[i].Name = n
	}
	rtmetrics.Read(s)
	v := func(i int) float64 { return float64(s[i].Value.Uint64()) }
	m := memSplit{goroutines: int(s[0].Value.Uint64()), stacks: v(1), heapLive: v(2),
		heapSlack: v(3) + v(4), released: v(5)}
	m.total = v(6) - m.released
	m.other = m.total - m.stacks - m.heapLive - m.heapSlack
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		var kb float64
		if _, err := fmt.Sscanf(line, "VmRSS: %f kB", &kb); err == nil {
			m.rss = kb * 1024
		}
	}
	return m
}

// per is the growth from base to m per client, in KiB.
func (m memSplit) per(base memSplit, n int) string {
	k := func(a, b float64) float64 { return (a - b) / 1024 / float64(n) }
	return fmt.Sprintf("| %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f |",
		k(m.stacks, base.stacks), k(m.heapLive, base.heapLive), k(m.heapSlack, base.heapSlack),
		k(m.other, base.other), k(m.total, base.total), k(m.rss, base.rss),
		float64(m.goroutines-base.goroutines)/float64(n))
}

// BenchmarkIdleClientMemory splits what an idle transaction-mode client costs the proxy into
// goroutine stacks, live heap, heap slack and the rest, with the runtime's own metrics, read
// before and after a forced garbage collection. The proxy runs in this process; the clients
// are pgbench's (another process, so none of their memory is counted): each logs in, runs
// select 1 and sleeps.
//
//	go test -run '^$' -bench IdleClientMemory -benchtime 1x ./proxy/
//	PROXYBENCH_IDLE_CLIENTS=1000 (default)
//	PROXYBENCH_PARK_DELAY=1s (default: parkDelay; 1h keeps idle clients' goroutines)
func BenchmarkIdleClientMemory(b *testing.B) {
	pgbench := benchTool(b, "pgbench")
	n := envInt("PROXYBENCH_IDLE_CLIENTS", 1000)
	if os.Getenv("PROXYBENCH_HEAP_PROFILE") != "" {
		runtime.MemProfileRate = 512 // the clients' small objects, not a sample of them
	}
	if v := os.Getenv("PROXYBENCH_PARK_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatal(err)
		}
		shortParkDelay(b, d)
	}
	h := newTxHarness(b, 20, func(pc *pool.Config, c *Config) {
		pc.MinConns = 20
		c.MaxClients = n + 100
	})
	script := filepath.Join(b.TempDir(), "idle.sql")
	if err := os.WriteFile(script, []byte("select 1;\n\\sleep 600 s\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	env := []string{"PGPASSWORD=" + pgtest.SuperuserPassword, "PGSSLMODE=disable", "PGCONNECT_TIMEOUT=60"}
	// A warm-up: the server connections open, the pools fill.
	warm := ctxTimeout(b, time.Minute)
	if out, err := runToolB(warm, env, "", pgbench, "-n", "-c", "20", "-j", "2", "-T", "2", "-S",
		"-h", "127.0.0.1", "-p", fmt.Sprint(h.port), "-U", "postgres", "postgres"); err != nil &&
		!strings.Contains(out, "pgbench_") {
		b.Fatalf("warm-up: %v\n%s", err, out)
	}
	runtime.GC()
	debug.FreeOSMemory()
	base := readMemSplit(b)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, pgbench, "-n", "-c", fmt.Sprint(n), "-j", "2", "-T", "600", "-f", script,
		"-h", "127.0.0.1", "-p", fmt.Sprint(h.port), "-U", "postgres", "postgres")
	cmd.Env = append(os.Environ(), env...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = cmd.Wait() }()
	defer cancel()
	in := map[string]string{"direction": "in"}
	in0 := h.metric(b, "pgsidecar_proxy_bytes_total", in)
	if !pgtest.WaitFor(3*time.Minute, func() bool {
		return h.metric(b, "pgsidecar_proxy_client_connections", map[string]string{"state": "idle"}) >= float64(n) &&
			h.metric(b, "pgsidecar_proxy_bytes_total", in)-in0 >= float64(n*len("Q....select 1;."))
	}) {
		b.Fatalf("%d clients did not log in and run a query: %.0f idle\n%s", n,
			h.metric(b, "pgsidecar_proxy_client_connections", map[string]string{"state": "idle"}), out.String())
	}
	if parkDelay < 10*time.Second {
		time.Sleep(parkDelay) // the clients park
	}
	time.Sleep(time.Second)
	idle := readMemSplit(b)
	runtime.GC()
	gc := readMemSplit(b)
	runtime.GC()
	gc2 := readMemSplit(b)
	debug.FreeOSMemory()
	freed := readMemSplit(b)
	if f := os.Getenv("PROXYBENCH_HEAP_PROFILE"); f != "" {
		// What the idle clients hold, by allocation site.
		w, err := os.Create(f)
		if err != nil {
			b.Fatal(err)
		}
		_ = pprof.Lookup("heap").WriteTo(w, 0)
		_ = w.Close()
	}

	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%d idle clients, KiB per client (growth over the warmed proxy after a GC; load average %.1f)\n", n, loadAverage())
	sb.WriteString("| reading | stacks | heap objects | heap slack | other | runtime total | RSS | goroutines per client |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	sb.WriteString("| idle, no forced GC " + idle.per(base, n) + "\n")
	sb.WriteString("| after runtime.GC " + gc.per(base, n) + "\n")
	sb.WriteString("| after a second runtime.GC " + gc2.per(base, n) + "\n")
	sb.WriteString("| after debug.FreeOSMemory " + freed.per(base, n) + "\n")
	printSummary(b, sb.String())
	b.ReportMetric((idle.rss-base.rss)/1024/float64(n), "rss_KiB/client")
	b.ReportMetric((gc2.stacks-base.stacks)/1024/float64(n), "stack_KiB/client")
	b.ReportMetric((gc2.heapLive-base.heapLive)/1024/float64(n), "heap_KiB/client")
}
