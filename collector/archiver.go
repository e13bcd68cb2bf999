package collector

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("archiver", true, "WAL archiving counters and the age of the last archived segment from pg_stat_archiver",
		func(Options) Collector { return newArchiver() })
}

// archiver reads pg_stat_archiver under postgres_exporter's stat_archiver names and types.
type archiver struct {
	archived, failed, lastAge *prometheus.Desc
}

func newArchiver() *archiver {
	return &archiver{
		archived: counterDesc("pg_stat_archiver_archived_count", "Number of WAL files that have been successfully archived."),
		failed:   counterDesc("pg_stat_archiver_failed_count", "Number of failed attempts for archiving WAL files."),
		lastAge: gaugeDesc("pg_stat_archiver_last_archive_age",
			"Time in seconds since the last WAL segment was successfully archived."),
	}
}

// archiverQuery is the same on every supported version (13–17). The age is NULL until a
// segment has been archived, and is then left out, as postgres_exporter does.
const archiverQuery = `
SELECT archived_count::float8, failed_count::float8,
       extract(epoch FROM now() - last_archived_time)::float8
FROM pg_stat_archiver`

func (c *archiver) Update(ctx context.Context, s *Scrape) error {
	var archived, failed, age *float64
	if err := s.Conn.QueryRow(ctx, archiverQuery).Scan(&archived, &failed, &age); err != nil {
		return err
	}
	if archived != nil {
		s.Counter(c.archived, *archived)
	}
	if failed != nil {
		s.Counter(c.failed, *failed)
	}
	if age != nil {
		s.Gauge(c.lastAge, *age)
	}
	return nil
}
