package collector

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
)

func TestSettings(t *testing.T) {
	e := newEnv(t, "", func(c *Config) {
		c.Timeout = 7 * time.Second
		c.Enabled = map[string]bool{"activity": false, "database": false}
	})
	s := e.scrape(t, 0, 20*time.Second)
	for name, want := range map[string]float64{
		"pg_settings_max_connections":                100,
		"pg_settings_superuser_reserved_connections": 3,
		"pg_settings_shared_buffers_bytes":           32 << 20, // pgtest sets 32MB
		// The server's value (none), not the collection timeout (7 s) the collector's own
		// sessions run with.
		"pg_settings_statement_timeout_seconds":          0,
		"pg_settings_fsync":                              0, // off in pgtest
		"pg_settings_autovacuum":                         1,
		"pg_settings_checkpoint_timeout_seconds":         300,
		"pg_settings_log_min_duration_statement_seconds": -1, // disabled stays -1
		"pg_settings_wal_segment_size_bytes":             16 << 20,
		// pg_settings gives commit_delay no unit; it is in microseconds.
		"pg_settings_commit_delay_seconds": 0,
	} {
		if got := s.value(t, name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := s.value(t, "pg_scrape_collector_success", map[string]string{"collector": "settings"}); got != 1 {
		t.Errorf("settings success = %v", got)
	}
	if _, ok := s.families["pg_settings_commit_delay"]; ok {
		t.Error("pg_settings_commit_delay is exported without its unit")
	}
	// Converted values say so in their help, and not the server's unit any more.
	converted := 0
	for name, mf := range s.families {
		help := mf.GetHelp()
		for suffix, unit := range map[string]string{"_seconds": "seconds", "_bytes": "bytes"} {
			if !strings.HasPrefix(name, "pg_settings_") || !strings.HasSuffix(name, suffix) {
				continue
			}
			converted++
			if !strings.HasSuffix(help, "[Units converted to "+unit+".]") {
				t.Errorf("%s help %q does not state the unit %s", name, help, unit)
			}
			if m := regexp.MustCompile(`milliseconds|microseconds|kilobytes|minutes|[Nn]umber of pages`).FindString(help); m != "" {
				t.Errorf("%s help %q still speaks of %s", name, help, m)
			}
		}
	}
	if converted < 20 {
		t.Errorf("%d settings with converted units, want the server's 20 or more", converted)
	}
	for name, want := range map[string]string{
		"pg_settings_vacuum_cost_delay_seconds":    "Vacuum cost delay. [Units converted to seconds.]",
		"pg_settings_commit_delay_seconds":         "Sets the delay between transaction commit and flushing WAL to disk. [Units converted to seconds.]",
		"pg_settings_max_stack_depth_bytes":        "Sets the maximum stack depth. [Units converted to bytes.]",
		"pg_settings_max_connections":              "Sets the maximum number of concurrent connections.",
		"pg_settings_checkpoint_flush_after_bytes": "Amount of data after which previously performed writes are flushed to disk. [Units converted to bytes.]",
	} {
		if got := s.families[name].GetHelp(); got != want {
			t.Errorf("%s help %q, want %q", name, got, want)
		}
	}
	var own string
	if err := e.exp.pool.QueryRow(ctxTimeout(t, 10*time.Second), "SHOW statement_timeout").Scan(&own); err != nil || own != "7s" {
		t.Errorf("the collector's sessions run with statement_timeout %q (%v), want 7s", own, err)
	}
}

// TestSettingsFollowReload: the values are reused between scrapes, and read again when the
// server reloads its configuration.
func TestSettingsFollowReload(t *testing.T) {
	e := newEnv(t, "", func(c *Config) { c.Enabled = map[string]bool{"activity": false, "database": false} })
	ctx := ctxTimeout(t, 30*time.Second)
	if got := e.scrape(t, 0, 20*time.Second).value(t, "pg_settings_work_mem_bytes", nil); got != 4<<20 {
		t.Fatalf("work_mem = %v, want the default 4 MiB", got)
	}
	t.Cleanup(func() {
		_ = cluster.Exec(context.Background(), "ALTER SYSTEM RESET work_mem")
		_ = cluster.Exec(context.Background(), "SELECT pg_reload_conf()")
	})
	if err := cluster.Exec(ctx, "ALTER SYSTEM SET work_mem = '8MB'"); err != nil {
		t.Fatal(err)
	}
	if err := cluster.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	var got float64
	if !pgtest.WaitFor(10*time.Second, func() bool {
		got = e.scrape(t, 0, 20*time.Second).value(t, "pg_settings_work_mem_bytes", nil)
		return got == 8<<20
	}) {
		t.Fatalf("work_mem after reload = %v, want 8 MiB", got)
	}
}

func TestSettingValue(t *testing.T) {
	for _, c := range []struct {
		setting, unit, vartype string
		want                   float64
		suffix                 string
	}{
		{"on", "", "bool", 1, ""},
		{"off", "", "bool", 0, ""},
		{"100", "", "integer", 100, ""},
		{"4096", "8kB", "integer", 4096 * 8192, "_bytes"},
		{"64", "kB", "integer", 64 << 10, "_bytes"},
		{"16", "MB", "integer", 16 << 20, "_bytes"},
		{"1500", "ms", "integer", 1.5, "_seconds"},
		{"5", "min", "integer", 300, "_seconds"},
		{"1", "d", "integer", 86400, "_seconds"},
		{"-1", "ms", "integer", -1, "_seconds"},
		{"250", "us", "integer", 0.00025, "_seconds"},
		{"0.9", "", "real", 0.9, ""},
	} {
		v, suffix, err := settingValue(c.setting, c.unit, c.vartype)
		if err != nil || v != c.want || suffix != c.suffix {
			t.Errorf("settingValue(%q, %q, %q) = %v, %q, %v; want %v, %q", c.setting, c.unit, c.vartype, v, suffix, err, c.want, c.suffix)
		}
	}
	for _, bad := range [][3]string{{"maybe", "", "bool"}, {"x", "", "integer"}, {"1", "parsecs", "integer"}} {
		if _, _, err := settingValue(bad[0], bad[1], bad[2]); err == nil {
			t.Errorf("settingValue%v: no error", bad)
		}
	}
}
