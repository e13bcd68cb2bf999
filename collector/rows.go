package collector

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

// column is one value column of a statistics view and the series it becomes.
type column struct {
	expr string // SQL giving the value; the query casts it to float8
	desc *prometheus.Desc
	typ  prometheus.ValueType
	// keepNull leaves a NULL value out; otherwise it reads 0, as in postgres_exporter.
	keepNull bool
}

// rowQuery is a query whose rows are label values (text, NULL read as "") followed by one value
// per column: the shape of most postgres_exporter collectors.
type rowQuery struct {
	labels []string // SQL of each label value
	cols   []column
	from   string // FROM clause and everything after it
	// perTable marks the series of a per-table collector, whose first three labels are
	// datname, schemaname and relname: the table limit filters its rows, and the series
	// budget leaves its series out table by table. labelNames are then its label names, in
	// the order of labels.
	perTable   bool
	labelNames []string
}

// sql renders the query.
func (q rowQuery) sql() string { return q.sqlWhere("") }

// sqlWhere renders the query with where (a WHERE clause, or "") after the FROM clause.
func (q rowQuery) sqlWhere(where string) string {
	var exprs []string
	for _, l := range q.labels {
		exprs = append(exprs, "COALESCE(("+l+")::text, '')")
	}
	for _, c := range q.cols {
		exprs = append(exprs, "("+c.expr+")::float8")
	}
	return "SELECT " + strings.Join(exprs, ",\n  ") + "\n" + q.from + where
}

// run queries and emits a sample per row and column; a per-table query only the rows of the
// tables the table limit chose.
func (q rowQuery) run(ctx context.Context, s *Scrape) error {
	var where string
	var args []any
	if q.perTable {
		var err error
		if where, args, err = s.tableFilter(ctx); err != nil {
			return err
		}
	}
	labels := make([]string, len(q.labels))
	vals := make([]*float64, len(q.cols))
	dest := make([]any, 0, len(labels)+len(vals))
	for i := range labels {
		dest = append(dest, &labels[i])
	}
	for i := range vals {
		dest = append(dest, &vals[i])
	}
	for _, c := range q.cols {
		s.check(c.desc, valueTypeName(c.typ))
	}
	var order []int
	var row []prometheus.Metric
	if q.perTable {
		order = labelOrder(q.labelNames)
		row = make([]prometheus.Metric, 0, len(q.cols))
	}
	return queryRows(ctx, s.Conn, q.sqlWhere(where), func(r pgx.Rows) error {
		if err := r.Scan(dest...); err != nil {
			return err
		}
		if q.perTable {
			q.emitRow(s.sink, labels, vals, order, row[:0])
			return nil
		}
		for i, c := range q.cols {
			if v, ok := c.value(vals[i]); ok {
				s.sink.add(c.desc, c.typ, v, labels)
			}
		}
		return nil
	}, args...)
}

// emitRow adds the samples of a per-table row, sharing its label pairs.
func (q rowQuery) emitRow(k *sink, labels []string, vals []*float64, order []int, row []prometheus.Metric) {
	pairs := rowLabels(q.labelNames, order, labels)
	if pairs == nil {
		k.invalidRow(len(q.cols), fmt.Errorf("label value of %s.%s in database %q is not valid UTF-8", labels[1], labels[2], labels[0]))
		return
	}
	for i, c := range q.cols {
		if v, ok := c.value(vals[i]); ok {
			row = append(row, &tableMetric{desc: c.desc, typ: c.typ, value: v, labels: pairs})
		}
	}
	k.addRow(row, labels[0]+"\xff"+labels[1]+"\xff"+labels[2])
}

// value is the sample a scanned value gives, and false for a NULL the column leaves out.
func (c column) value(p *float64) (float64, bool) {
	switch {
	case p != nil:
		return *p, true
	case c.keepNull:
		return 0, false
	}
	return 0, true
}

// gauge, counter and nullableGauge build columns.
// They declare the column's type for Declarations.
func gauge(expr string, d *prometheus.Desc) column {
	declareType(d, TypeGauge)
	return column{expr: expr, desc: d, typ: prometheus.GaugeValue}
}

func counter(expr string, d *prometheus.Desc) column {
	declareType(d, TypeCounter)
	return column{expr: expr, desc: d, typ: prometheus.CounterValue}
}

func nullableGauge(expr string, d *prometheus.Desc) column {
	declareType(d, TypeGauge)
	return column{expr: expr, desc: d, typ: prometheus.GaugeValue, keepNull: true}
}

// epoch is SQL turning a timestamp into seconds since the Unix epoch, 0 for NULL (never).
func epoch(ts string) string { return "COALESCE(floor(extract(epoch FROM " + ts + ")), 0)" }
