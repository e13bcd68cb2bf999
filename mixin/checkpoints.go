package mixin

import "fmt"

// PostgreSQL 17 moved the checkpoint counters from pg_stat_bgwriter (the bgwriter collector's
// pg_stat_bgwriter_* series) to pg_stat_checkpointer (the checkpointer collector's
// pg_stat_checkpointer_*). A server has one or the other, so the rules and panels read
// "old or new": each sidecar's series of its own server's version.

// checkpointCounters are the two names of each checkpoint counter: before and from PostgreSQL 17.
var checkpointCounters = map[string][2]string{
	"timed":      {"pg_stat_bgwriter_checkpoints_timed_total", "pg_stat_checkpointer_num_timed_total"},
	"requested":  {"pg_stat_bgwriter_checkpoints_req_total", "pg_stat_checkpointer_num_requested_total"},
	"write_time": {"pg_stat_bgwriter_checkpoint_write_time_total", "pg_stat_checkpointer_write_time_total"},
	"sync_time":  {"pg_stat_bgwriter_checkpoint_sync_time_total", "pg_stat_checkpointer_sync_time_total"},
	"buffers":    {"pg_stat_bgwriter_buffers_checkpoint_total", "pg_stat_checkpointer_buffers_written_total"},
}

// checkpoints is fn (increase or rate) of a checkpoint counter over window, from whichever
// series the server has, for a rule (the selector and join are added to every rule later).
func checkpoints(counter, fn, window string) string {
	names, ok := checkpointCounters[counter]
	if !ok {
		panic("mixin: no checkpoint counter " + counter)
	}
	return fmt.Sprintf("%[1]s(%[2]s[%[4]s]) or %[1]s(%[3]s[%[4]s])", fn, names[0], names[1], window)
}

// checkpointsSel is checkpoints for a panel: each series with the dashboard's selector.
func checkpointsSel(counter, fn, window string) string {
	names, ok := checkpointCounters[counter]
	if !ok {
		panic("mixin: no checkpoint counter " + counter)
	}
	return fmt.Sprintf("%[1]s(%[2]s{SEL}[%[4]s]) or %[1]s(%[3]s{SEL}[%[4]s])", fn, names[0], names[1], window)
}
