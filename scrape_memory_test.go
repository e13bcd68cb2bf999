package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/internal/testutil"
)

// TestScrapeMemory measures the binary's peak memory (VmHWM) for one scrape of a database with
// PGSIDECAR_TEST_SCRAPE_MEMORY_TABLES tables, then for 20 and 50 parallel scrapes, which must
// stay under 4× one scrape's, with the table limit and the series budget off (every table's
// series, the worst case). It takes about 20 s for 10,000 tables, so it runs only when asked:
//
//	PGSIDECAR_TEST_SCRAPE_MEMORY_TABLES=10000 go test -run TestScrapeMemory -v .
func TestScrapeMemory(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("PGSIDECAR_TEST_SCRAPE_MEMORY_TABLES"))
	if n <= 0 {
		t.Skip("set PGSIDECAR_TEST_SCRAPE_MEMORY_TABLES to run")
	}
	ctx := t.Context()
	_ = cluster.Exec(ctx, "DROP DATABASE IF EXISTS scrape_memory WITH (FORCE)")
	must(t, cluster.Exec(ctx, "CREATE DATABASE scrape_memory"))
	t.Cleanup(func() { _ = cluster.Exec(t.Context(), "DROP DATABASE IF EXISTS scrape_memory WITH (FORCE)") })
	conn, err := pgx.Connect(ctx, cluster.URL("scrape_memory"))
	must(t, err)
	for i := 0; i < n; i += 500 { // 500 a transaction: each table takes a lock until commit
		_, err := conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN FOR i IN %d..%d LOOP
  EXECUTE format('CREATE TABLE t%%s (id int PRIMARY KEY, v text)', i); END LOOP; END $$`, i, min(i+499, n-1)))
		must(t, err)
	}
	must(t, conn.Close(ctx))

	clearPoolEnv(t)
	addr := testutil.FreeAddr(t)
	out, err := os.CreateTemp(t.TempDir(), "log")
	must(t, err)
	p := startProcess(t, out, "--database-url="+cluster.URL("scrape_memory"), "--web.listen-address="+addr,
		"--collection-timeout=60s", "--db.metrics-log-interval=0", "--collector.tables.limit=0", "--collector.max-series=0")
	peak := func() int { return procStatusMB(t, p.cmd.Process.Pid, "VmHWM") }
	scrape := func() {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/metrics", nil)
		req.Header.Set("Accept-Encoding", "gzip")
		r, err := (&http.Client{Timeout: 2 * time.Minute}).Do(req)
		if err != nil {
			t.Error(err)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		r.Body.Close()
	}
	if !pgtest.WaitFor(20*time.Second, func() bool {
		r, err := http.Get("http://" + addr + "/")
		if err == nil {
			r.Body.Close()
		}
		return err == nil
	}) {
		t.Fatal("the sidecar does not listen")
	}
	scrape()
	one := peak()
	t.Logf("%d tables, one scrape: peak %d MB", n, one)
	for _, k := range []int{20, 50} {
		start := time.Now()
		var wg sync.WaitGroup
		for range k {
			wg.Go(scrape)
		}
		wg.Wait()
		t.Logf("%d parallel scrapes: %v, peak %d MB", k, time.Since(start), peak())
	}
	if got := peak(); got >= 4*one {
		t.Errorf("peak %d MB after 50 parallel scrapes, want under 4× one scrape's %d MB", got, one)
	}
}

// procStatusMB reads a size field of /proc/PID/status in MB.
func procStatusMB(t *testing.T, pid int, field string) int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	must(t, err)
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.Atoi(strings.Fields(v)[0])
			must(t, err)
			return kb / 1024
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
