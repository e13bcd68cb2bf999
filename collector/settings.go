package collector

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
)

func init() {
	register("settings", true, "Numeric and boolean server settings from pg_settings, in seconds and bytes",
		func(Options) Collector { return &settings{descs: map[string]*prometheus.Desc{}} })
}

// settings exports every numeric and boolean setting as pg_settings_NAME, with time units
// converted to seconds (suffix _seconds) and memory units to bytes (suffix _bytes), as
// postgres_exporter does. pg_settings only changes for a session when the server reloads its
// configuration, so the values are read again only then (or on a new session).
type settings struct {
	mu     sync.Mutex
	descs  map[string]*prometheus.Desc // by name, unit and help
	key    string                      // Scrape.ConfigKey of the cached values
	cached []settingSample
}

type settingSample struct {
	desc  *prometheus.Desc
	value float64
}

// reset_val, not setting: the collector's sessions SET their own statement_timeout, and what
// the metric should show is the value the server gives a session of this role and database.
const settingsQuery = `
SELECT name, reset_val, coalesce(unit, ''), short_desc, vartype
FROM pg_settings
WHERE vartype IN ('bool', 'integer', 'real')`

func (c *settings) Update(ctx context.Context, s *Scrape) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.ConfigKey == "" || s.ConfigKey != c.key {
		if err := c.read(ctx, s); err != nil {
			return err
		}
		c.key = s.ConfigKey
	}
	for _, x := range c.cached {
		s.Gauge(x.desc, x.value)
	}
	return nil
}

func (c *settings) read(ctx context.Context, s *Scrape) error {
	var out []settingSample
	err := queryRows(ctx, s.Conn, settingsQuery, func(r pgx.Rows) error {
		var name, setting, unit, help, vartype string
		if err := r.Scan(&name, &setting, &unit, &help, &vartype); err != nil {
			return err
		}
		if unit == "" {
			unit = unitlessSettings[name]
		}
		v, suffix, err := settingValue(setting, unit, vartype)
		if err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
		key := name + "\xff" + unit + "\xff" + help
		d, ok := c.descs[key]
		if !ok {
			metric := "pg_settings_" + strings.NewReplacer(".", "_", "-", "_").Replace(name) + suffix
			d = desc(metric, settingHelp(help, suffix))
			c.descs[key] = d
		}
		out = append(out, settingSample{desc: d, value: v})
		return nil
	})
	if err != nil {
		return err
	}
	c.cached = out
	return nil
}

// unitlessSettings gives the unit of settings that pg_settings lists without one although
// their value has a unit: commit_delay is in microseconds. With it they are converted and
// suffixed like every other time setting.
var unitlessSettings = map[string]string{"commit_delay": "us"}

// unitPhrases are the server's words for a setting's unit in its description; once the value
// is converted they would be wrong, so they are taken out.
var unitPhrases = regexp.MustCompile(`,? in (milliseconds|microseconds|seconds|minutes|kilobytes)|(N|n)umber of pages|number of kilobytes`)

// settingHelp is the server's description of a setting, with the unit the value was converted
// to instead of the server's unit, in postgres_exporter's words.
func settingHelp(help, suffix string) string {
	if suffix == "" {
		return help
	}
	help = unitPhrases.ReplaceAllStringFunc(help, func(m string) string {
		switch m {
		case "Number of pages":
			return "Amount of data"
		case "number of pages", "number of kilobytes":
			return "amount of data"
		}
		return ""
	})
	return help + " [Units converted to " + strings.TrimPrefix(suffix, "_") + ".]"
}

// settingValue parses a pg_settings value and normalises its unit: time to seconds, memory to
// bytes. It returns the metric name suffix for the unit. Negative values (usually "disabled")
// are kept as they are.
func settingValue(setting, unit, vartype string) (float64, string, error) {
	var v float64
	switch vartype {
	case "bool":
		switch setting {
		case "on":
			return 1, "", nil
		case "off":
			return 0, "", nil
		}
		return 0, "", fmt.Errorf("bad boolean %q", setting)
	default:
		var err error
		v, err = strconv.ParseFloat(setting, 64)
		if err != nil {
			return 0, "", fmt.Errorf("bad number %q", setting)
		}
	}
	if unit == "" {
		return v, "", nil
	}
	mult, suffix, err := unitScale(unit)
	if err != nil {
		return 0, "", err
	}
	if v < 0 {
		return v, suffix, nil
	}
	return v * mult, suffix, nil
}

// unitScale understands pg_settings units: ms, s, min, h, d (and us, see unitlessSettings),
// and memory units with an optional
// block multiplier such as 8kB.
func unitScale(unit string) (float64, string, error) {
	switch unit {
	case "us":
		return 1e-6, "_seconds", nil
	case "ms":
		return 1e-3, "_seconds", nil
	case "s":
		return 1, "_seconds", nil
	case "min":
		return 60, "_seconds", nil
	case "h":
		return 3600, "_seconds", nil
	case "d":
		return 86400, "_seconds", nil
	}
	i := 0
	for i < len(unit) && unit[i] >= '0' && unit[i] <= '9' {
		i++
	}
	mult := 1.0
	if i > 0 {
		n, _ := strconv.Atoi(unit[:i])
		mult = float64(n)
	}
	switch unit[i:] {
	case "B":
	case "kB":
		mult *= 1 << 10
	case "MB":
		mult *= 1 << 20
	case "GB":
		mult *= 1 << 30
	case "TB":
		mult *= 1 << 40
	default:
		return 0, "", fmt.Errorf("unknown unit %q", unit)
	}
	return mult, "_bytes", nil
}
