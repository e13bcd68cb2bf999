package collector

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/pgsidecar/pgsidecar/internal/regularfile"
)

// Column usages of a custom query, as in postgres_exporter's queries.yaml.
const (
	usageLabel   = "LABEL"
	usageCounter = "COUNTER"
	usageGauge   = "GAUGE"
	usageDiscard = "DISCARD"
	// usageHistogram: the column holds the upper bounds (an array), COLUMN_bucket the
	// cumulative counts (an array), COLUMN_sum and COLUMN_count the rest of one histogram.
	usageHistogram = "HISTOGRAM"
	// usageMapped: a gauge whose text values the column's metric_mapping turns into numbers
	// (postgres_exporter exports only the numbers: it never reads a file's mapping).
	usageMapped = "MAPPEDMETRIC"
	// usageDuration: a gauge of milliseconds named COLUMN_milliseconds; text such as "1.5s" is
	// converted (postgres_exporter exports only the numbers).
	usageDuration = "DURATION"
)

// usages lists the usages in the order error messages name them.
var usages = []string{usageLabel, usageCounter, usageGauge, usageDiscard, usageHistogram, usageMapped, usageDuration}

// customQuery is one entry of the queries file.
type customQuery struct {
	name         string // the namespace, prefix of its metric names
	line         int
	sql          string
	columns      []customColumn
	cacheSeconds int
	timeout      time.Duration
	maxSeries    int // samples one run may export; more fails the query
	minVersion   int // server_version_num bounds, 0 for none
	maxVersion   int
	labels       []string // label column names in order
	// everySidecar runs the query on every sidecar, not only on the one that collects the
	// server's statistics (--collector.scope): for what each sidecar sees for itself.
	everySidecar bool
	// known are the result columns the file accounts for (listed, or a histogram's
	// companions); postgres_exporter exports every other numeric column as an untyped
	// NAME_COLUMN, and so does readResult, with the descs made on first sight kept here.
	known     map[string]bool
	unknownMu sync.Mutex
	unknown   map[string]*prometheus.Desc
	reserved  func(string) bool
}

type customColumn struct {
	name        string
	usage       string
	description string
	mapping     map[string]float64 // MAPPEDMETRIC values
	desc        *prometheus.Desc   // for every column that becomes a metric
}

// appliesTo reports whether the query runs on a server of this version.
func (q *customQuery) appliesTo(version int) bool {
	return (q.minVersion == 0 || version >= q.minVersion) && (q.maxVersion == 0 || version <= q.maxVersion)
}

var (
	metricNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelNameRE  = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	yamlLineRE   = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)
)

var queryKeys = []string{"query", "metrics", "cache_seconds", "timeout", "max_series", "min_version", "max_version", "master", "runonserver", "every_sidecar"}

// DefaultMaxSeries bounds what one custom query may export when its max_series is not set: a
// label taken from an unbounded column (a query text, an id) fails that query with a clear
// error instead of growing every scrape and Prometheus' memory.
const DefaultMaxSeries = 10000

// maxQueriesFileSize bounds a queries file: the shipped one is under 10 KiB.
const maxQueriesFileSize = 4 << 20

// loadQueries reads and validates a queries file. reserved holds metric names a custom query
// does not take (the built-in collectors' names): such a column is left out with a warning, so
// that a postgres_exporter file whose queries the built-ins now cover loads unchanged. Every
// problem found is reported, each as "file:line: message". Only a regular file of at most
// maxQueriesFileSize is read, so that a FIFO or /dev/zero given by mistake fails at once
// instead of hanging start-up or a reload.
func loadQueries(path string, reserved func(string) bool) ([]*customQuery, []string, error) {
	data, err := regularfile.Read(path, maxQueriesFileSize)
	if err != nil {
		return nil, nil, err
	}
	return parseQueries(path, data, reserved)
}

func parseQueries(path string, data []byte, reserved func(string) bool) ([]*customQuery, []string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		msg := err.Error()
		if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
			return nil, nil, fmt.Errorf("%s:%s: %s", path, m[1], m[2])
		}
		return nil, nil, fmt.Errorf("%s: %s", path, msg)
	}
	p := &queryParser{path: path, reserved: reserved, metrics: map[string]int{}}
	if len(doc.Content) == 0 {
		return nil, nil, nil // an empty file defines no queries
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "expected a mapping of query names to queries")
		return nil, nil, p.err()
	}
	seen := map[string]int{}
	var out []*customQuery
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if prev, dup := seen[k.Value]; dup {
			p.errorf(k, "query %q defined twice (first at line %d)", k.Value, prev)
			continue
		}
		seen[k.Value] = k.Line
		if q := p.query(k, v); q != nil {
			out = append(out, q)
		}
	}
	if err := p.err(); err != nil {
		return nil, nil, err
	}
	return out, p.warnings, nil
}

type queryParser struct {
	path     string
	reserved func(string) bool
	metrics  map[string]int // metric name → line defined
	errs     []string
	warnings []string
}

func (p *queryParser) warnf(n *yaml.Node, format string, args ...any) {
	p.warnings = append(p.warnings, fmt.Sprintf("%s:%d: %s", p.path, n.Line, fmt.Sprintf(format, args...)))
}

func (p *queryParser) errorf(n *yaml.Node, format string, args ...any) {
	p.errs = append(p.errs, fmt.Sprintf("%s:%d: %s", p.path, n.Line, fmt.Sprintf(format, args...)))
}

func (p *queryParser) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(p.errs, "\n"))
}

func (p *queryParser) query(k, v *yaml.Node) *customQuery {
	name := k.Value
	if !metricNameRE.MatchString(name) {
		p.errorf(k, "query name %q is not a valid metric name prefix", name)
		return nil
	}
	if v.Kind != yaml.MappingNode {
		p.errorf(v, "query %s: expected a mapping with query and metrics", name)
		return nil
	}
	q := &customQuery{name: name, line: k.Line, maxSeries: DefaultMaxSeries, known: map[string]bool{},
		unknown: map[string]*prometheus.Desc{}, reserved: p.reserved}
	errsBefore := len(p.errs)
	var metricsNode *yaml.Node
	for i := 0; i+1 < len(v.Content); i += 2 {
		key, val := v.Content[i], v.Content[i+1]
		switch key.Value {
		case "query":
			if val.Kind != yaml.ScalarNode || strings.TrimSpace(val.Value) == "" {
				p.errorf(val, "query %s: query must be a non-empty string", name)
			}
			q.sql = val.Value
		case "metrics":
			metricsNode = val
		case "cache_seconds":
			n, err := strconv.Atoi(val.Value)
			if val.Kind != yaml.ScalarNode || err != nil || n < 0 {
				p.errorf(val, "query %s: cache_seconds must be a whole number of seconds, not %q", name, val.Value)
			}
			q.cacheSeconds = n
		case "timeout":
			d, err := time.ParseDuration(val.Value)
			if val.Kind != yaml.ScalarNode || err != nil || d <= 0 {
				p.errorf(val, "query %s: timeout must be a positive duration such as 2s or 500ms, not %q", name, val.Value)
			}
			q.timeout = d
		case "max_series":
			n, err := strconv.Atoi(val.Value)
			if val.Kind != yaml.ScalarNode || err != nil || n < 1 {
				p.errorf(val, "query %s: max_series must be a whole number of at least 1, not %q", name, val.Value)
			}
			q.maxSeries = n
		case "min_version", "max_version":
			n, err := parseServerVersion(val.Value, key.Value == "max_version")
			if val.Kind != yaml.ScalarNode || err != nil {
				p.errorf(val, "query %s: %s must be a PostgreSQL version such as 13, 14.2 or 140002, not %q", name, key.Value, val.Value)
			}
			if key.Value == "min_version" {
				q.minVersion = n
			} else {
				q.maxVersion = n
			}
		case "master":
			if val.Kind != yaml.ScalarNode || (val.Value != "true" && val.Value != "false") {
				p.errorf(val, "query %s: master must be true or false", name)
			}
		case "every_sidecar":
			if val.Kind != yaml.ScalarNode || (val.Value != "true" && val.Value != "false") {
				p.errorf(val, "query %s: every_sidecar must be true or false", name)
			}
			q.everySidecar = val.Value == "true"
		case "runonserver":
			// postgres_exporter reads it and runs the query on every version all the same;
			// min_version and max_version are what limits a query here.
			if val.Kind != yaml.ScalarNode {
				p.errorf(val, "query %s: runonserver must be a version range such as \">=13.0.0\"", name)
			}
		default:
			p.errorf(key, "query %s: unknown key %q (known: %s)", name, key.Value, strings.Join(queryKeys, ", "))
		}
	}
	if q.sql == "" && len(p.errs) == errsBefore {
		p.errorf(k, "query %s: missing query", name)
	}
	if q.minVersion != 0 && q.maxVersion != 0 && q.minVersion > q.maxVersion {
		p.errorf(k, "query %s: min_version is above max_version", name)
	}
	if metricsNode == nil {
		p.errorf(k, "query %s: missing metrics", name)
		return nil
	}
	p.columns(q, metricsNode)
	if len(p.errs) > errsBefore {
		return nil
	}
	for _, col := range q.columns {
		if col.desc != nil {
			return q
		}
	}
	p.warnf(k, "query %s left out: the built-in collectors export all its metrics", name)
	return nil
}

func (p *queryParser) columns(q *customQuery, n *yaml.Node) {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, "query %s: metrics must be a list of column: {usage, description} entries", q.name)
		return
	}
	errsBefore := len(p.errs)
	cols := map[string]bool{}
	type pending struct {
		col  customColumn
		node *yaml.Node
	}
	var metricCols []pending
	for _, item := range n.Content {
		if item.Kind != yaml.MappingNode || len(item.Content) != 2 {
			p.errorf(item, "query %s: each metrics entry must be a single column: {usage, description} mapping", q.name)
			continue
		}
		ck, cv := item.Content[0], item.Content[1]
		col := customColumn{name: ck.Value}
		if !labelNameRE.MatchString(col.name) || strings.HasPrefix(col.name, "__") {
			p.errorf(ck, "query %s: column name %q is not a valid Prometheus name", q.name, col.name)
			continue
		}
		if cols[col.name] {
			p.errorf(ck, "query %s: column %s listed twice", q.name, col.name)
			continue
		}
		cols[col.name] = true
		q.known[col.name] = true
		if cv.Kind != yaml.MappingNode {
			p.errorf(cv, "query %s: column %s: expected usage and description", q.name, col.name)
			continue
		}
		usageLine := ck
		for i := 0; i+1 < len(cv.Content); i += 2 {
			key, val := cv.Content[i], cv.Content[i+1]
			switch key.Value {
			case "usage":
				col.usage = val.Value
				usageLine = val
			case "description":
				col.description = val.Value
			case "metric_mapping":
				if err := val.Decode(&col.mapping); err != nil {
					p.errorf(val, "query %s: column %s: metric_mapping must map text values to numbers", q.name, col.name)
				}
			case "pg_version":
				// Read by postgres_exporter for its built-in maps only; a file's column is
				// queried on every version there, and here.
			default:
				p.errorf(key, "query %s: column %s: unknown key %q (known: usage, description, metric_mapping, pg_version)", q.name, col.name, key.Value)
			}
		}
		switch col.usage {
		case usageLabel:
			q.labels = append(q.labels, col.name)
		case usageCounter, usageGauge, usageMapped, usageDuration:
			metricCols = append(metricCols, pending{col: col, node: ck})
		case usageHistogram:
			for _, part := range []string{"_bucket", "_sum", "_count"} {
				q.known[col.name+part] = true
			}
			metricCols = append(metricCols, pending{col: col, node: ck})
		case usageDiscard:
		case "":
			p.errorf(ck, "query %s: column %s: missing usage (%s)", q.name, col.name, strings.Join(usages, ", "))
		default:
			p.errorf(usageLine, "query %s: column %s: usage %q is not one of %s", q.name, col.name, col.usage, strings.Join(usages, ", "))
		}
		q.columns = append(q.columns, col)
	}
	if len(metricCols) == 0 && len(p.errs) == errsBefore {
		p.errorf(n, "query %s: no metric columns (usage COUNTER, GAUGE, HISTOGRAM, MAPPEDMETRIC or DURATION)", q.name)
	}
	for _, m := range metricCols {
		metric := q.name + "_" + m.col.name
		if m.col.usage == usageDuration {
			metric += "_milliseconds" // postgres_exporter's name
		}
		if prev, dup := p.metrics[metric]; dup {
			p.errorf(m.node, "query %s: metric %s already defined at line %d", q.name, metric, prev)
			continue
		}
		if p.reserved(metric) {
			p.warnf(m.node, "query %s: metric %s left out: a built-in collector exports it", q.name, metric)
			continue
		}
		p.metrics[metric] = m.node.Line
		help := m.col.description
		if help == "" {
			help = "Custom query " + q.name + ", column " + m.col.name + "."
		}
		for i := range q.columns {
			if q.columns[i].name == m.col.name {
				q.columns[i].desc = prometheus.NewDesc(metric, help, q.labels, nil)
			}
		}
	}
}

// parseServerVersion reads "13", "14.2", "9.6" or a server_version_num such as 140002. A bare
// major version as a maximum means its last minor release.
func parseServerVersion(s string, upper bool) (int, error) {
	if n, err := strconv.Atoi(s); err == nil && n >= 10000 {
		return n, nil
	}
	major, minor, hasMinor := strings.Cut(s, ".")
	ma, err := strconv.Atoi(major)
	if err != nil || ma <= 0 {
		return 0, fmt.Errorf("bad version %q", s)
	}
	if !hasMinor {
		if upper {
			return ma*10000 + 9999, nil
		}
		return ma * 10000, nil
	}
	mi, err := strconv.Atoi(minor)
	if err != nil || mi < 0 {
		return 0, fmt.Errorf("bad version %q", s)
	}
	if ma < 10 {
		return ma*10000 + mi*100, nil
	}
	return ma*10000 + mi, nil
}
