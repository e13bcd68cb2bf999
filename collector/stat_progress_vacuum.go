package collector

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("stat_progress_vacuum", true, "Progress of running VACUUMs from pg_stat_progress_vacuum",
		func(Options) Collector { return newStatProgressVacuum() })
}

// vacuumPhases are the phases pg_stat_progress_vacuum reports, in postgres_exporter's order:
// each running vacuum gets a phase series per phase, 1 for the current one.
var vacuumPhases = []string{"initializing", "scanning heap", "vacuuming indexes", "vacuuming heap",
	"cleaning up indexes", "truncating heap", "performing final cleanup"}

// statProgressVacuum exports postgres_exporter's stat_progress_vacuum series. relname is
// schema-qualified for vacuums in the connected database, the table's OID elsewhere (pg_class
// is per database).
type statProgressVacuum struct {
	phase, heapBlks, heapScanned, heapVacuumed, indexVacuums, maxDead, numDead *prometheus.Desc
}

func newStatProgressVacuum() *statProgressVacuum {
	const p = "pg_stat_progress_vacuum_"
	l := []string{"datname", "relname"}
	return &statProgressVacuum{
		phase:        gaugeDesc(p+"phase", "1 for the vacuum's current phase (label phase), 0 for the others.", "datname", "relname", "phase"),
		heapBlks:     gaugeDesc(p+"heap_blks", "Total number of heap blocks in the table being vacuumed.", l...),
		heapScanned:  gaugeDesc(p+"heap_blks_scanned", "Number of heap blocks scanned so far.", l...),
		heapVacuumed: gaugeDesc(p+"heap_blks_vacuumed", "Number of heap blocks vacuumed so far.", l...),
		indexVacuums: gaugeDesc(p+"index_vacuums", "Number of completed index vacuum cycles.", l...),
		maxDead: before(170000, gaugeDesc(p+"max_dead_tuples",
			"Number of dead tuples that can be stored before an index vacuum cycle is needed (before PostgreSQL 17).", l...)),
		numDead: gaugeDesc(p+"num_dead_tuples",
			"Number of dead tuples (dead item identifiers from PostgreSQL 17) collected since the last index vacuum cycle.", l...),
	}
}

// statProgressVacuumQuery is the query for a server version: PostgreSQL 17 counts dead items
// instead of dead tuples and measures the dead-item store in bytes, which has no tuple count.
func statProgressVacuumQuery(version int) string {
	maxDead, numDead := "max_dead_tuples", "num_dead_tuples"
	if version >= 170000 {
		maxDead, numDead = "NULL", "num_dead_item_ids"
	}
	return `
SELECT COALESCE(datname::text, ''),
       COALESCE(CASE WHEN datname = current_database() THEN relid::regclass::text END, relid::text),
       phase, heap_blks_total::float8, heap_blks_scanned::float8, heap_blks_vacuumed::float8,
       index_vacuum_count::float8, ` + maxDead + `::float8, ` + numDead + `::float8
FROM pg_stat_progress_vacuum`
}

func (c *statProgressVacuum) Update(ctx context.Context, s *Scrape) error {
	return queryRows(ctx, s.Conn, statProgressVacuumQuery(s.Version), func(r pgx.Rows) error {
		var datname, relname, phase string
		var total, scanned, vacuumed, indexVacuums float64
		var maxDead, numDead *float64
		if err := r.Scan(&datname, &relname, &phase, &total, &scanned, &vacuumed, &indexVacuums, &maxDead, &numDead); err != nil {
			return err
		}
		for _, p := range vacuumPhases {
			v := 0.0
			if p == phase {
				v = 1
			}
			s.Gauge(c.phase, v, datname, relname, p)
		}
		s.Gauge(c.heapBlks, total, datname, relname)
		s.Gauge(c.heapScanned, scanned, datname, relname)
		s.Gauge(c.heapVacuumed, vacuumed, datname, relname)
		s.Gauge(c.indexVacuums, indexVacuums, datname, relname)
		if maxDead != nil {
			s.Gauge(c.maxDead, *maxDead, datname, relname)
		}
		if numDead != nil {
			s.Gauge(c.numDead, *numDead, datname, relname)
		}
		return nil
	})
}
