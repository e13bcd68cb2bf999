package collector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/sqlnorm"
)

func init() {
	register("statements", false, "Top statements by total time from pg_stat_statements",
		func(o Options) Collector { return newStatements(o) })
}

// statements exports the top statements by total execution time. A server without the
// pg_stat_statements extension is told about once in the log; the collector then exports
// nothing and still succeeds, since that is a setup choice rather than a failure.
type statements struct {
	limit       int
	queryLength int // characters of statement text exported, 0 for none
	// excludeDBs and excludeUsers are left out (never nil: the query takes them as arrays).
	excludeDBs, excludeUsers []string
	log                      *slog.Logger

	calls, seconds, rows, readTime, writeTime, queryText *prometheus.Desc
	// Blocks, named after pg_stat_statements' columns (postgres_exporter has none).
	sharedHit, sharedRead, tempRead, tempWritten *prometheus.Desc

	join *statementJoin // query ids to fingerprints

	mu         sync.Mutex
	toldAbsent bool
	toldTexts  bool // the texts could not be read once; logged once per process
}

func newStatements(o Options) *statements {
	l := []string{"user", "datname", "queryid"}
	return &statements{
		limit:        o.StatementsLimit,
		queryLength:  o.StatementsQueryLength,
		excludeDBs:   append([]string{}, o.StatementsExcludeDatabases...),
		excludeUsers: append([]string{}, o.StatementsExcludeUsers...),
		log:          o.Logger,
		join:         newStatementJoin(o.StatementsLimit),
		calls:        counterDesc("pg_stat_statements_calls_total", "Times the statement was executed.", l...),
		seconds:      counterDesc("pg_stat_statements_seconds_total", "Total time spent executing the statement.", l...),
		rows:         counterDesc("pg_stat_statements_rows_total", "Rows retrieved or affected by the statement.", l...),
		readTime: counterDesc("pg_stat_statements_block_read_seconds_total",
			"Time the statement spent reading blocks (needs track_io_timing).", l...),
		writeTime: counterDesc("pg_stat_statements_block_write_seconds_total",
			"Time the statement spent writing blocks (needs track_io_timing).", l...),
		sharedHit:   counterDesc("pg_stat_statements_shared_blks_hit_total", "Shared buffer hits of the statement, in blocks.", l...),
		sharedRead:  counterDesc("pg_stat_statements_shared_blks_read_total", "Shared blocks the statement read (not in shared buffers).", l...),
		tempRead:    counterDesc("pg_stat_statements_temp_blks_read_total", "Temporary blocks the statement read.", l...),
		tempWritten: counterDesc("pg_stat_statements_temp_blks_written_total", "Temporary blocks the statement wrote.", l...),
		queryText: counterDesc("pg_stat_statements_query_id",
			"Text of an exported statement, normalised (every constant a placeholder, comments dropped) and cut to --collector.statements.query-length characters; always 1.", "queryid", "query"),
	}
}

// statementsQuery picks the block time columns by version: PostgreSQL 17 renamed
// blk_read_time/blk_write_time to shared_blk_read_time/shared_blk_write_time. Rows are summed
// over toplevel (14+) so each (user, database, queryid) appears once. The statement texts
// live in a file the server reads in whole whenever they are asked for, so
// pg_stat_statements(false) leaves them out unless queryLength (characters kept) is above 0.
// schema is the extension's schema, quoted: it need not be on the session's search_path.
func statementsQuery(version, queryLength int, schema string) string {
	read, write := "blk_read_time", "blk_write_time"
	if version >= 170000 {
		read, write = "shared_blk_read_time", "shared_blk_write_time"
	}
	text, from := "NULL::text", schema+".pg_stat_statements(false)"
	if queryLength > 0 {
		text, from = fmt.Sprintf("min(left(s.query, %d))", textFetchLength(queryLength)), schema+".pg_stat_statements(true)"
	}
	return fmt.Sprintf(`
SELECT r.rolname, d.datname, s.queryid::text,
       sum(s.calls)::float8, (sum(s.total_exec_time) / 1000)::float8, sum(s.rows)::float8,
       (sum(s.%s) / 1000)::float8, (sum(s.%s) / 1000)::float8, %s,
       sum(s.shared_blks_hit)::float8, sum(s.shared_blks_read)::float8,
       sum(s.temp_blks_read)::float8, sum(s.temp_blks_written)::float8
FROM %s s
JOIN pg_roles r ON r.oid = s.userid
JOIN pg_database d ON d.oid = s.dbid
WHERE s.queryid IS NOT NULL AND d.datname <> ALL ($2::text[]) AND r.rolname <> ALL ($3::text[])
GROUP BY r.rolname, d.datname, s.queryid
ORDER BY sum(s.total_exec_time) DESC
LIMIT $1`, read, write, text, from)
}

// textFetchLength is how many characters of a statement's text are read to export
// queryLength of them: the text is normalised before it is cut, and dropping comments and
// folding whitespace shortens it. A text longer than this is cut first; a cut inside a string
// or comment leaves it unlexable, so it is not shown rather than shown in part.
func textFetchLength(queryLength int) int { return max(4*queryLength, 8192) }

// statementsSchema finds the extension in pg_extension, so one installed in a schema outside
// the collector's search_path is still read. It gives the quoted schema name, or "" when the
// extension is not installed in the connected database.
const statementsSchema = `SELECT coalesce((SELECT quote_ident(n.nspname) FROM pg_extension x
JOIN pg_namespace n ON n.oid = x.extnamespace WHERE x.extname = 'pg_stat_statements'), '')`

func (c *statements) Update(ctx context.Context, s *Scrape) error {
	var schema string
	if err := s.Conn.QueryRow(ctx, statementsSchema).Scan(&schema); err != nil {
		return err
	}
	if schema == "" {
		c.tellAbsentOnce("pg_stat_statements is not installed in this database (CREATE EXTENSION pg_stat_statements)")
		return nil
	}
	keys, err := c.read(ctx, s, schema, c.queryLength)
	var pgErr *pgconn.PgError
	if c.queryLength > 0 && errors.As(err, &pgErr) && (pgErr.Code == "22021" || pgErr.Code == "22P05") {
		// A statement text from a database of another encoding (SQL_ASCII allows any bytes)
		// cannot be converted to this one's, and the server fails the whole call for it. The
		// figures do not need the texts: read them without.
		c.tellTextsOnce(pgErr.Message)
		keys, err = c.read(ctx, s, schema, 0)
	}
	if err == nil {
		if jerr := c.join.update(ctx, s, schema, keys); jerr != nil {
			c.log.Debug("Statement query id join incomplete", "error", jerr.Error())
		}
	}
	if errors.As(err, &pgErr) && pgErr.Code == "55000" {
		// The extension exists but the library is not in shared_preload_libraries.
		c.tellAbsentOnce("pg_stat_statements is installed but not loaded (add it to shared_preload_libraries)")
		return nil
	}
	if err == nil {
		c.mu.Lock()
		c.toldAbsent = false
		c.mu.Unlock()
	}
	return err
}

// read exports the top statements, with texts of queryLength characters when above 0, and
// returns their databases and query ids, each once.
func (c *statements) read(ctx context.Context, s *Scrape, schema string, queryLength int) ([]joinKey, error) {
	texts := map[string]bool{} // queryids whose text was sent: one text per queryid
	var keys []joinKey
	seen := map[joinKey]bool{}
	err := queryRows(ctx, s.Conn, statementsQuery(s.Version, queryLength, schema), func(r pgx.Rows) error {
		var user, db, id string
		var calls, secs, rows, read, write, hit, sharedRead, tempRead, tempWritten float64
		var text *string
		if err := r.Scan(&user, &db, &id, &calls, &secs, &rows, &read, &write, &text, &hit, &sharedRead, &tempRead, &tempWritten); err != nil {
			return err
		}
		s.Counter(c.sharedHit, hit, user, db, id)
		s.Counter(c.sharedRead, sharedRead, user, db, id)
		s.Counter(c.tempRead, tempRead, user, db, id)
		s.Counter(c.tempWritten, tempWritten, user, db, id)
		s.Counter(c.calls, calls, user, db, id)
		s.Counter(c.seconds, secs, user, db, id)
		s.Counter(c.rows, rows, user, db, id)
		s.Counter(c.readTime, read, user, db, id)
		s.Counter(c.writeTime, write, user, db, id)
		if k := (joinKey{db, id}); !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
		if text != nil && !texts[id] {
			texts[id] = true
			// A counter, as postgres_exporter exports it.
			s.Counter(c.queryText, 1, id, shownText(*text, c.queryLength))
		}
		return nil
	}, c.limit, c.excludeDBs, c.excludeUsers)
	return keys, err
}

// shownText is a statement text as it may leave the process, like the slow query log's:
// pg_stat_statements replaces the constants of planned statements but keeps utility
// statements (ALTER ROLE … PASSWORD '…') and comments as sent, so the text is normalised
// again, every constant a placeholder and every comment gone, then cut to length characters.
// Bytes that are not UTF-8 (a SQL_ASCII database's text) become U+FFFD first; text the
// normaliser cannot lex is not shown.
func shownText(text string, length int) string {
	norm, err := sqlnorm.Normalize(strings.ToValidUTF8(text, "\uFFFD"))
	if err != nil {
		return "(not shown: statement that cannot be normalised)"
	}
	if n := 0; len(norm) > length {
		for i := range norm {
			if n == length {
				return norm[:i]
			}
			n++
		}
	}
	return norm
}

// warnOnce logs msg with attrs unless told is already set, and sets it: a condition of the
// server is reported when it starts, not at every scrape.
func (c *statements) warnOnce(told *bool, msg string, attrs ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !*told {
		*told = true
		c.log.Warn(msg, attrs...)
	}
}

func (c *statements) tellTextsOnce(msg string) {
	c.warnOnce(&c.toldTexts, "Statements collector exports no statement texts: the server cannot convert one to this database's encoding", "error", msg)
}

func (c *statements) tellAbsentOnce(msg string) {
	c.warnOnce(&c.toldAbsent, "Statements collector has nothing to read", "reason", msg)
}
