package collector

import (
	"context"
)

func init() {
	registerPerDatabase("stat_user_tables", true, "Table access, tuple and vacuum statistics from pg_stat_user_tables, in every database",
		func(Options) Collector { return newStatUserTables() })
}

// statUserTables exports postgres_exporter's stat_user_tables series. The counters keep
// upstream's names without _total; the last_* times are Unix times in seconds, 0 for never.
type statUserTables struct {
	q rowQuery
}

func newStatUserTables() *statUserTables {
	l := []string{"datname", "schemaname", "relname"}
	c := func(col, help string) column { return counter(col, desc("pg_stat_user_tables_"+col, help, l...)) }
	g := func(col, help string) column { return gauge(col, desc("pg_stat_user_tables_"+col, help, l...)) }
	t := func(col, help string) column { return gauge(epoch(col), desc("pg_stat_user_tables_"+col, help, l...)) }
	return &statUserTables{q: rowQuery{
		labels: []string{"current_database()", "schemaname", "relname"},
		cols: []column{
			c("seq_scan", "Number of sequential scans initiated on this table."),
			c("seq_tup_read", "Number of live rows fetched by sequential scans."),
			c("idx_scan", "Number of index scans initiated on this table."),
			c("idx_tup_fetch", "Number of live rows fetched by index scans."),
			c("n_tup_ins", "Number of rows inserted."),
			c("n_tup_upd", "Number of rows updated."),
			c("n_tup_del", "Number of rows deleted."),
			c("n_tup_hot_upd", "Number of rows HOT updated (with no separate index update required)."),
			g("n_live_tup", "Estimated number of live rows."),
			g("n_dead_tup", "Estimated number of dead rows."),
			g("n_mod_since_analyze", "Estimated number of rows changed since the last analyze."),
			t("last_vacuum", "Last time this table was manually vacuumed (not counting VACUUM FULL), in seconds since the Unix epoch; 0 for never."),
			t("last_autovacuum", "Last time this table was vacuumed by the autovacuum daemon, in seconds since the Unix epoch; 0 for never."),
			t("last_analyze", "Last time this table was manually analyzed, in seconds since the Unix epoch; 0 for never."),
			t("last_autoanalyze", "Last time this table was analyzed by the autovacuum daemon, in seconds since the Unix epoch; 0 for never."),
			c("vacuum_count", "Number of times this table has been manually vacuumed (not counting VACUUM FULL)."),
			c("autovacuum_count", "Number of times this table has been vacuumed by the autovacuum daemon."),
			c("analyze_count", "Number of times this table has been manually analyzed."),
			c("autoanalyze_count", "Number of times this table has been analyzed by the autovacuum daemon."),
			nullableGauge(unlocked("pg_indexes_size(relid)"), desc("pg_stat_user_tables_index_size_bytes",
				"Disk space used by the indexes of this table; absent while another session holds or awaits an ACCESS EXCLUSIVE lock on it.", l...)),
			nullableGauge(unlocked("pg_table_size(relid)"), desc("pg_stat_user_tables_table_size_bytes",
				"Disk space used by this table, without its indexes; absent while another session holds or awaits an ACCESS EXCLUSIVE lock on it.", l...)),
		},
		// The same columns exist on every supported version (13–17).
		from:     "FROM pg_stat_user_tables",
		perTable: true, labelNames: l,
	}}
}

// unlocked is size, a size function of relid, for tables no session holds or awaits an ACCESS
// EXCLUSIVE lock on, else NULL. The size functions open the table with ACCESS SHARE, which waits
// behind such a lock (VACUUM FULL, a migration's ALTER TABLE) and, queued behind a waiting one,
// blocks like it; reading pg_locks once first leaves those tables' sizes out instead. A lock
// taken between the two is left to the session's lock_timeout.
func unlocked(size string) string {
	return `CASE WHEN relid NOT IN (SELECT l.relation FROM pg_locks l WHERE l.locktype = 'relation'
  AND l.mode = 'AccessExclusiveLock' AND l.relation IS NOT NULL
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())) THEN ` + size + ` END`
}

func (c *statUserTables) Update(ctx context.Context, s *Scrape) error { return c.q.run(ctx, s) }
