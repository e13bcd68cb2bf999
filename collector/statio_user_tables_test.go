package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestStatioUserTables(t *testing.T) {
	createDB(t, "statio_t")
	c := openSession(t, "statio_t", "statio-test")
	ctx := ctxTimeout(t, 30*time.Second)
	for _, sql := range []string{
		"CREATE TABLE t (id int PRIMARY KEY, v text)",
		"ALTER TABLE t ALTER v SET STORAGE EXTERNAL", // values over 2 kB go to the TOAST table
		"INSERT INTO t SELECT g, repeat('x', 3000) FROM generate_series(1, 100) g",
		"SELECT sum(length(v)) FROM t",
		"SELECT count(*) FROM t WHERE id = 5",
	} {
		if _, err := c.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	e := newEnv(t, "statio_t", func(c *Config) {
		only("statio_user_tables", "statio_user_indexes")(c)
		c.Databases = "statio_t"
	})
	tbl := map[string]string{"datname": "statio_t", "schemaname": "public", "relname": "t"}
	var s scrape
	if !waitScrape(t, e, func(s scrape) bool {
		vs := s.values("pg_statio_user_tables_heap_blocks_hit", tbl)
		return len(vs) == 1 && vs[0] > 0
	}, &s) {
		t.Fatalf("heap block hits never counted:\n%s", s.body)
	}
	collectorOK(t, s, "statio_user_tables")
	collectorOK(t, s, "statio_user_indexes")
	for _, name := range []string{"heap_blocks_read", "heap_blocks_hit", "idx_blocks_read", "idx_blocks_hit",
		"toast_blocks_read", "toast_blocks_hit", "tidx_blocks_read", "tidx_blocks_hit"} {
		checkFamily(t, s, "pg_statio_user_tables_"+name, dto.MetricType_COUNTER, "datname", "schemaname", "relname")
	}
	for _, name := range []string{"idx_blks_read_total", "idx_blks_hit_total"} {
		checkFamily(t, s, "pg_statio_user_indexes_"+name, dto.MetricType_COUNTER, "datname", "schemaname", "relname", "indexrelname")
	}
	idx := map[string]string{"datname": "statio_t", "relname": "t", "indexrelname": "t_pkey"}
	if got := s.value(t, "pg_statio_user_indexes_idx_blks_hit_total", idx) + s.value(t, "pg_statio_user_indexes_idx_blks_read_total", idx); got < 1 {
		t.Errorf("index blocks read or hit = %v after inserts and an index lookup", got)
	}
	if got := s.value(t, "pg_statio_user_tables_toast_blocks_hit", tbl) + s.value(t, "pg_statio_user_tables_toast_blocks_read", tbl); got < 1 {
		t.Errorf("TOAST blocks read or hit = %v after TOASTed inserts", got)
	}
	if DefaultEnabled("statio_user_indexes") || !DefaultEnabled("statio_user_tables") {
		t.Error("default states differ from postgres_exporter's (statio_user_tables on, statio_user_indexes off)")
	}
}
