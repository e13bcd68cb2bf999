package proxy

import (
	"context"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/collector"
	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
	"github.com/pgsidecar/pgsidecar/pool"
)

// TestStatementsJoinQueryIDs: 20 distinct statements (some in several spellings: other
// constants, a negative number, TRUE or NULL, a constant of another type or in another
// position) run through the proxy on two databases; with the statements collector on, the
// query ids that pgsidecar_statement_queryid_info joins to each fingerprint are exactly those
// PostgreSQL gives the statement's texts (EXPLAIN VERBOSE's Query Identifier, or for a
// prepared text pg_stat_statements' row of that text), per database.
func TestStatementsJoinQueryIDs(t *testing.T) {
	ctx := ctxTimeout(t, 60*time.Second)
	dbs := []string{"join_a", "join_b"}
	for _, db := range dbs {
		if err := cluster.Exec(ctx, "CREATE DATABASE "+db); err != nil && sqlState(err) != "42P04" {
			t.Fatal(err)
		}
		c, err := pgx.Connect(ctx, cluster.URL(db))
		if err != nil {
			t.Fatal(err)
		}
		for _, sql := range []string{"CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
			"CREATE TABLE IF NOT EXISTS jt (id int, v text, n numeric, b bool)", "SELECT pg_stat_statements_reset()"} {
			if _, err := c.Exec(ctx, sql); err != nil {
				t.Fatal(err)
			}
		}
		c.Close(ctx)
	}
	// Each line is one statement: its spellings are one fingerprint.
	simple := [][]string{
		{"SELECT v FROM jt WHERE id = 1", "SELECT v FROM jt WHERE id = -3", "SELECT v FROM jt WHERE id = 1.5"},
		{"SELECT 1, 'a' FROM jt", "SELECT 'a', 1 FROM jt"},
		{"UPDATE jt SET b = true WHERE id = 1", "UPDATE jt SET b = NULL WHERE id = 2", "UPDATE jt SET b = false WHERE id = -2"},
		{"INSERT INTO jt (id, v) VALUES (1, 'x')", "INSERT INTO jt (id, v) VALUES (-1, 'y')"},
		{"DELETE FROM jt WHERE id = -100"},
		{"SELECT count(*) FROM jt WHERE v LIKE 'a%'"},
		{"SELECT * FROM jt WHERE id IN (1, 2, 3)", "SELECT * FROM jt WHERE id IN (4, -5, 6)"},
		{"SELECT id FROM jt ORDER BY id LIMIT 5"},
		{"SELECT sum(n) FROM jt WHERE n > -2.5", "SELECT sum(n) FROM jt WHERE n > 7"},
		{"SELECT v FROM jt WHERE b IS NULL"},
		{"SELECT v FROM jt WHERE b IS NOT TRUE"},
		{"SELECT id FROM jt WHERE v = 'x' AND id > 3"},
		{"SELECT coalesce(v, 'none') FROM jt"},
		{"SELECT id FROM jt WHERE id BETWEEN -10 AND 10", "SELECT id FROM jt WHERE id BETWEEN 1 AND 2"},
		{"SELECT CASE WHEN id > 0 THEN 'p' ELSE 'n' END FROM jt"},
		{"SELECT now() - interval '1 day'"},
		{"SELECT upper(v) FROM jt WHERE id = 7"},
		{"UPDATE jt SET n = n + 1 WHERE id = 2"},
		{"SELECT max(id) FROM jt WHERE v <> 'z'"},
	}
	// Prepared: the first is a spelling of the first statement above (a parameter where it has
	// a constant: another query id), the second one more statement.
	prepared := []string{"SELECT v FROM jt WHERE id = $1", "SELECT id FROM jt WHERE v = $1 AND b = $2"}
	args := map[string][]any{prepared[0]: {1}, prepared[1]: {"x", true}}

	type key struct{ db, queryid string }
	want := map[string]map[key]bool{} // fingerprint → query ids
	add := func(sql string, k key) {
		fp, _, err := fingerprint.Of(sql)
		if err != nil {
			t.Fatal(err)
		}
		if want[fp.String()] == nil {
			want[fp.String()] = map[key]bool{}
		}
		want[fp.String()][k] = true
	}
	queryID := regexp.MustCompile(`Query Identifier: (-?\d+)`)
	var mgrs []*pool.Manager
	for _, db := range dbs {
		h := newHarness(t, func(pc *pool.Config, _ *Config) {
			pc.DatabaseURL = cluster.URL(db)
			pc.StatementsTop = 100
		})
		mgrs = append(mgrs, h.mgr)
		conn := h.connect(t, ctx, strings.Replace(h.superURL(), "/postgres?", "/"+db+"?", 1))
		direct, err := pgx.Connect(ctx, cluster.URL(db))
		if err != nil {
			t.Fatal(err)
		}
		defer direct.Close(context.Background())
		for _, spellings := range simple {
			for _, sql := range spellings {
				if _, err := conn.Exec(ctx, sql, pgx.QueryExecModeSimpleProtocol); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
				var plan []string
				rows, err := direct.Query(ctx, "EXPLAIN (VERBOSE) "+sql, pgx.QueryExecModeSimpleProtocol)
				if err != nil {
					t.Fatal(err)
				}
				for rows.Next() {
					var line string
					if err := rows.Scan(&line); err != nil {
						t.Fatal(err)
					}
					plan = append(plan, line)
				}
				m := queryID.FindStringSubmatch(strings.Join(plan, "\n"))
				if m == nil {
					t.Fatalf("no query identifier in the plan of %s:\n%s", sql, strings.Join(plan, "\n"))
				}
				add(sql, key{db, m[1]})
			}
		}
		for _, sql := range prepared {
			if _, err := conn.Exec(ctx, sql, args[sql]...); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
			// Its row: of those with its text (which a spelling with constants shares), the one
			// whose query id no spelling above has.
			fp, _, _ := fingerprint.Of(sql)
			rows, err := direct.Query(ctx, "SELECT s.queryid::text FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1 AND s.query = $2", db, sql)
			if err != nil {
				t.Fatal(err)
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
			if err != nil {
				t.Fatal(err)
			}
			ids = slices.DeleteFunc(ids, func(id string) bool { return want[fp.String()][key{db, id}] })
			if len(ids) != 1 {
				t.Fatalf("%s has %d rows of its own in pg_stat_statements, want 1", sql, len(ids))
			}
			add(sql, key{db, ids[0]})
		}
	}
	for _, m := range mgrs {
		have := map[string]bool{}
		for _, st := range m.Statements() {
			have[st.Fingerprint] = true
		}
		for fp := range want {
			if !have[fp] {
				t.Errorf("the proxy measured no statement of fingerprint %s", fp)
			}
		}
	}
	if len(want) != 20 {
		t.Fatalf("%d fingerprints, want 20 statements", len(want))
	}

	// The collector, on the first database (pg_stat_statements is the server's).
	reg := prometheus.NewRegistry()
	ccfg := collector.DefaultConfig()
	ccfg.QueriesFile = ""
	ccfg.StatementsLimit = 1000
	ccfg.Enabled = map[string]bool{"statements": true}
	exp, err := collector.New(mgrs[0], ccfg)
	if err != nil {
		t.Fatal(err)
	}
	defer exp.Close()
	reg.MustRegister(exp)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]map[key]bool{}
	for _, mf := range mfs {
		if mf.GetName() != "pgsidecar_statement_queryid_info" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if got[l["fingerprint"]] == nil {
				got[l["fingerprint"]] = map[key]bool{}
			}
			got[l["fingerprint"]][key{l["datname"], l["queryid"]}] = true
		}
	}
	for fp, ids := range want {
		if !maps.Equal(got[fp], ids) {
			t.Errorf("fingerprint %s joins %v, want %v", fp, sortedKeys(got[fp]), sortedKeys(ids))
		}
	}
}

func sortedKeys[K comparable](m map[K]bool) []string {
	var out []string
	for k := range m {
		out = append(out, fmt.Sprint(k))
	}
	slices.Sort(out)
	return out
}
