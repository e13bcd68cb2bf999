package collector

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/fingerprint"
)

// statementJoin maps pg_stat_statements' query ids onto pgsidecar's statement fingerprints,
// exported as pgsidecar_statement_queryid_info{fingerprint, datname, queryid}: the server's
// figures of a statement (pg_stat_statements_*{datname, queryid}) beside the sidecar's
// (pgsidecar_statement_*{fingerprint}). A query id covers texts that differ in constants,
// differs between databases and between a constant and a parameter, so one fingerprint may
// join several.
//
// A query id is mapped from the text PostgreSQL shows for it: the statement a session is
// running (pg_stat_activity's query_id and query, PostgreSQL 14+, sampled at each scrape), or
// else pg_stat_statements' text (the first text seen, its constants as $n), read only for query
// ids not mapped yet. A text cut short (longer than track_activity_query_size, or than
// maxJoinText) is not used.
type statementJoin struct {
	info *prometheus.Desc

	mu   sync.Mutex
	byID map[joinKey]fingerprint.Fingerprint // bounded by maxJoined
	max  int
}

type joinKey struct{ db, queryid string }

// maxJoinText is the longest pg_stat_statements text read to map a query id.
const maxJoinText = 64 << 10

func newStatementJoin(limit int) *statementJoin {
	return &statementJoin{
		info: since(140000, gaugeDesc("pgsidecar_statement_queryid_info",
			"The pg_stat_statements query ids (per database) of each statement fingerprint of pgsidecar_statement_duration_seconds, for the exported statements; always 1.",
			"fingerprint", "datname", "queryid")),
		byID: map[joinKey]fingerprint.Fingerprint{},
		max:  max(4*limit, 1024),
	}
}

// learn maps (db, queryid) to the fingerprint of text; exact texts (pg_stat_activity's)
// replace what a pg_stat_statements text gave.
func (j *statementJoin) learn(k joinKey, text string) {
	fp, err := fingerprint.Sum(strings.ToValidUTF8(text, "\uFFFD"))
	if err != nil {
		return
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.byID[k]; !ok && len(j.byID) >= j.max {
		j.byID = map[joinKey]fingerprint.Fingerprint{} // clients choose the texts: start afresh
	}
	j.byID[k] = fp
}

// sampleActivity maps the query ids of the statements sessions are running now.
func (j *statementJoin) sampleActivity(ctx context.Context, s *Scrape) error {
	if s.Version < 140000 {
		return nil
	}
	return queryRows(ctx, s.Conn, `
SELECT datname, query_id::text, query FROM pg_stat_activity
WHERE query_id IS NOT NULL AND query_id <> 0 AND datname IS NOT NULL
  AND octet_length(query) < (SELECT setting::int FROM pg_settings WHERE name = 'track_activity_query_size') - 1`,
		func(r pgx.Rows) error {
			var k joinKey
			var text string
			if err := r.Scan(&k.db, &k.queryid, &text); err != nil {
				return err
			}
			j.learn(k, text)
			return nil
		})
}

// unmapped returns the keys of keys not mapped yet.
func (j *statementJoin) unmapped(keys []joinKey) []joinKey {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []joinKey
	for _, k := range keys {
		if _, ok := j.byID[k]; !ok {
			out = append(out, k)
		}
	}
	return out
}

// readTexts maps the query ids of keys from pg_stat_statements' texts.
func (j *statementJoin) readTexts(ctx context.Context, s *Scrape, schema string, keys []joinKey) error {
	ids := make([]string, 0, len(keys))
	want := map[joinKey]bool{}
	for _, k := range keys {
		ids = append(ids, k.queryid)
		want[k] = true
	}
	return queryRows(ctx, s.Conn, `
SELECT DISTINCT ON (d.datname, s.queryid) d.datname, s.queryid::text, s.query
FROM `+schema+`.pg_stat_statements(true) s JOIN pg_database d ON d.oid = s.dbid
WHERE s.queryid = ANY ($1::bigint[]) AND octet_length(s.query) <= $2`,
		func(r pgx.Rows) error {
			var k joinKey
			var text string
			if err := r.Scan(&k.db, &k.queryid, &text); err != nil {
				return err
			}
			if want[k] {
				j.learn(k, text)
			}
			return nil
		}, ids, maxJoinText)
}

// export sends the info series of keys that are mapped.
func (j *statementJoin) export(s *Scrape, keys []joinKey) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, k := range keys {
		if fp, ok := j.byID[k]; ok {
			s.Gauge(j.info, 1, fp.String(), k.db, k.queryid)
		}
	}
}

// update maps and exports the query ids of the exported statements, keys (each once), and
// returns what failed. Failing to read texts costs only the join (what is mapped is still
// exported): it is not the collector's failure.
func (j *statementJoin) update(ctx context.Context, s *Scrape, schema string, keys []joinKey) error {
	err := j.sampleActivity(ctx, s)
	if missing := j.unmapped(keys); len(missing) > 0 {
		err = errors.Join(err, j.readTexts(ctx, s, schema, missing))
	}
	j.export(s, keys)
	return err
}
