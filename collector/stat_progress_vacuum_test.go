package collector

import (
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

// TestStatProgressVacuumQueryByVersion: PostgreSQL 17 counts dead item identifiers and has no
// dead-tuple capacity any more.
func TestStatProgressVacuumQueryByVersion(t *testing.T) {
	for _, c := range []struct {
		version   int
		want, not string
	}{
		{130012, "num_dead_tuples::float8", "num_dead_item_ids"},
		{150004, "max_dead_tuples::float8", "num_dead_item_ids"},
		{160001, "num_dead_tuples::float8", "num_dead_item_ids"},
		{170002, "num_dead_item_ids::float8", "max_dead_tuples"},
	} {
		q := statProgressVacuumQuery(c.version)
		if !strings.Contains(q, c.want) || strings.Contains(q, c.not) {
			t.Errorf("%d: want %s and no %s in\n%s", c.version, c.want, c.not, q)
		}
	}
}

// TestStatProgressVacuum catches a VACUUM in the act: an aggressive vacuum (FREEZE) must take a
// cleanup lock on every page, and an open cursor keeps one pinned, so it waits in the
// "scanning heap" phase until the cursor closes.
func TestStatProgressVacuum(t *testing.T) {
	createDB(t, "vacuum_t")
	holder := openSession(t, "vacuum_t", "vacuum-pin")
	ctx := ctxTimeout(t, 60*time.Second)
	for _, sql := range []string{
		"CREATE TABLE t (id int) WITH (autovacuum_enabled = false)",
		"INSERT INTO t SELECT generate_series(1, 1000)",
		"DELETE FROM t WHERE id % 2 = 0",
		"BEGIN",
		"DECLARE c CURSOR FOR SELECT * FROM t",
		"FETCH 1 FROM c",
	} {
		if _, err := holder.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	vac := openSession(t, "vacuum_t", "vacuum-run")
	done := make(chan error, 1)
	go func() {
		_, err := vac.Exec(ctx, "VACUUM (FREEZE) t")
		done <- err
	}()
	if !pgtest.WaitFor(20*time.Second, func() bool {
		n, _ := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_stat_progress_vacuum WHERE datname = 'vacuum_t'")
		return n == 1
	}) {
		t.Fatal("the vacuum never showed in pg_stat_progress_vacuum")
	}
	e := newEnv(t, "vacuum_t", only("stat_progress_vacuum"))
	s := e.scrape(t, 0, 20*time.Second)
	if _, err := holder.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("vacuum: %v", err)
	}
	collectorOK(t, s, "stat_progress_vacuum")
	rel := map[string]string{"datname": "vacuum_t", "relname": "t"}
	checkFamily(t, s, "pg_stat_progress_vacuum_phase", dto.MetricType_GAUGE, "datname", "relname", "phase")
	names := []string{"heap_blks", "heap_blks_scanned", "heap_blks_vacuumed", "index_vacuums", "num_dead_tuples"}
	if version, err := cluster.QueryInt(ctx, "SELECT current_setting('server_version_num')::int"); err != nil {
		t.Fatal(err)
	} else if version < 170000 {
		// PostgreSQL 17 measures the dead-item store in bytes: no tuple count to export.
		names = append(names, "max_dead_tuples")
	}
	for _, name := range names {
		checkFamily(t, s, "pg_stat_progress_vacuum_"+name, dto.MetricType_GAUGE, "datname", "relname")
	}
	if got := s.value(t, "pg_stat_progress_vacuum_phase", map[string]string{"datname": "vacuum_t", "relname": "t", "phase": "scanning heap"}); got != 1 {
		t.Errorf("phase{scanning heap} = %v, want 1\n%s", got, s.body)
	}
	if n := len(s.values("pg_stat_progress_vacuum_phase", rel)); n != len(vacuumPhases) {
		t.Errorf("%d phase series, want %d", n, len(vacuumPhases))
	}
	if got := s.value(t, "pg_stat_progress_vacuum_heap_blks", rel); got < 1 {
		t.Errorf("heap_blks = %v", got)
	}
}
