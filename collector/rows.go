package collector

import (
	"context"
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
}

// sql renders the query.
func (q rowQuery) sql() string {
	var exprs []string
	for _, l := range q.labels {
		exprs = append(exprs, "COALESCE(("+l+")::text, '')")
	}
	for _, c := range q.cols {
		exprs = append(exprs, "("+c.expr+")::float8")
	}
	return "SELECT " + strings.Join(exprs, ",\n  ") + "\n" + q.from
}

// run queries and emits a sample per row and column.
func (q rowQuery) run(ctx context.Context, s *Scrape) error {
	labels := make([]string, len(q.labels))
	vals := make([]*float64, len(q.cols))
	dest := make([]any, 0, len(labels)+len(vals))
	for i := range labels {
		dest = append(dest, &labels[i])
	}
	for i := range vals {
		dest = append(dest, &vals[i])
	}
	return queryRows(ctx, s.Conn, q.sql(), func(r pgx.Rows) error {
		if err := r.Scan(dest...); err != nil {
			return err
		}
		for i, c := range q.cols {
			v := 0.0
			if vals[i] != nil {
				v = *vals[i]
			} else if c.keepNull {
				continue
			}
			s.sink.add(c.desc, c.typ, v, labels)
		}
		return nil
	})
}

// gauge, counter and nullableGauge build columns.
// They declare the column's type for Declarations.
func gauge(expr string, d *prometheus.Desc) column {
	declareType(d, prometheus.GaugeValue)
	return column{expr: expr, desc: d, typ: prometheus.GaugeValue}
}

func counter(expr string, d *prometheus.Desc) column {
	declareType(d, prometheus.CounterValue)
	return column{expr: expr, desc: d, typ: prometheus.CounterValue}
}

func nullableGauge(expr string, d *prometheus.Desc) column {
	declareType(d, prometheus.GaugeValue)
	return column{expr: expr, desc: d, typ: prometheus.GaugeValue, keepNull: true}
}

// epoch is SQL turning a timestamp into seconds since the Unix epoch, 0 for NULL (never).
func epoch(ts string) string { return "COALESCE(floor(extract(epoch FROM " + ts + ")), 0)" }
