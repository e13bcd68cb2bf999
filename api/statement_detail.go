package api

import (
	"cmp"
	"net/http"
	"slices"
	"time"
)

// StatementDetailResponse is one statement by fingerprint: what the sidecar measured, beside
// what the server counted for the same statement in pg_stat_statements, per database and query
// id (joined by pgsidecar_statement_queryid_info; empty without --collector.statements).
type StatementDetailResponse struct {
	Timestamp   time.Time `json:"timestamp"`
	Fingerprint string    `json:"fingerprint"`
	// Sidecar is the statement as the top statements list has it; null when it is not among
	// them (any more).
	Sidecar *Statement `json:"sidecar"`
	// Server is its pg_stat_statements rows, summed over users; cumulative since the server's
	// statistics were last reset.
	Server []ServerStatement `json:"server"`
}

// ServerStatement is one query id of a statement in pg_stat_statements.
type ServerStatement struct {
	Database           string  `json:"database"`
	QueryID            string  `json:"queryId"`
	Calls              float64 `json:"calls"`
	MeanMs             float64 `json:"meanMs"` // execution time per call
	RowsPerCall        float64 `json:"rowsPerCall"`
	SharedHitPerCall   float64 `json:"sharedBlocksHitPerCall"`
	SharedReadPerCall  float64 `json:"sharedBlocksReadPerCall"`
	TempReadPerCall    float64 `json:"tempBlocksReadPerCall"`
	TempWrittenPerCall float64 `json:"tempBlocksWrittenPerCall"`
}

// statementDetail answers /api/database/statements?fingerprint=…: the numbers of the
// Statement detail dashboard, for the status page's statement table.
func (h *Handler) statementDetail(w http.ResponseWriter, r *http.Request) {
	fp := r.URL.Query().Get("fingerprint")
	if !isFingerprint(fp) {
		writeError(w, http.StatusBadRequest, "fingerprint must be 16 lower case hex digits")
		return
	}
	resp := StatementDetailResponse{Timestamp: time.Now().UTC(), Fingerprint: fp, Server: []ServerStatement{}}
	for _, st := range h.statements(0) {
		if st.Fingerprint == fp {
			resp.Sidecar = &st
			break
		}
	}
	if serving(h.mgr.Health().Status) {
		if snap := h.gather(); snap != nil {
			resp.Server = snap.serverStatements(fp)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

func isFingerprint(s string) bool {
	if len(s) != 16 {
		return false
	}
	for i := range len(s) {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// serverStatements sums the pg_stat_statements rows of the query ids joined to fp.
func (s *registrySnapshot) serverStatements(fp string) []ServerStatement {
	type key struct{ db, id string }
	rows := map[key]*ServerStatement{}
	s.each("pgsidecar_statement_queryid_info", func(l map[string]string, _ float64) {
		if l["fingerprint"] == fp {
			rows[key{l["datname"], l["queryid"]}] = &ServerStatement{Database: l["datname"], QueryID: l["queryid"]}
		}
	})
	if len(rows) == 0 {
		return []ServerStatement{}
	}
	var secs, rowCount, hit, read, tempRead, tempWritten = map[key]float64{}, map[key]float64{}, map[key]float64{}, map[key]float64{}, map[key]float64{}, map[key]float64{}
	for name, into := range map[string]map[key]float64{
		"pg_stat_statements_seconds_total":           secs,
		"pg_stat_statements_rows_total":              rowCount,
		"pg_stat_statements_shared_blks_hit_total":   hit,
		"pg_stat_statements_shared_blks_read_total":  read,
		"pg_stat_statements_temp_blks_read_total":    tempRead,
		"pg_stat_statements_temp_blks_written_total": tempWritten,
	} {
		s.each(name, func(l map[string]string, v float64) { into[key{l["datname"], l["queryid"]}] += v })
	}
	s.each("pg_stat_statements_calls_total", func(l map[string]string, v float64) {
		if r := rows[key{l["datname"], l["queryid"]}]; r != nil {
			r.Calls += v
		}
	})
	out := make([]ServerStatement, 0, len(rows))
	for k, r := range rows {
		if r.Calls > 0 {
			r.MeanMs = round3(secs[k] / r.Calls * 1000)
			r.RowsPerCall = round3(rowCount[k] / r.Calls)
			r.SharedHitPerCall = round3(hit[k] / r.Calls)
			r.SharedReadPerCall = round3(read[k] / r.Calls)
			r.TempReadPerCall = round3(tempRead[k] / r.Calls)
			r.TempWrittenPerCall = round3(tempWritten[k] / r.Calls)
		}
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b ServerStatement) int {
		return cmp.Or(cmp.Compare(a.Database, b.Database), cmp.Compare(a.QueryID, b.QueryID))
	})
	return out
}
