// Package settings describes a package's configuration values in one table, from which the
// binary builds its flags and environment variables and the reference docs list them.
package settings

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/xhit/go-str2duration/v2"
)

// Setting is one configuration value of a C: its flag, its environment variable, its default,
// its meaning and how a string sets it.
type Setting[C any] struct {
	// Env is the environment variable that sets the value ("" for none).
	Env string
	// Flag is the command-line flag, without the leading dashes.
	Flag string
	// Default is the value used when neither the flag nor the variable is given ("" for none).
	Default string
	// Help says what the value does, in one or two sentences.
	Help string
	// PlaceHolder stands for the value in --help; empty shows the default, or else the flag name.
	PlaceHolder string
	// Bool marks an on/off switch: --NAME sets "true" and --no-NAME "false".
	Bool bool
	// Repeatable marks a list: each use of the flag (each line of the variable) adds a value.
	// Its default, if any, is the list when neither the flag nor the variable is given; Apply
	// leaves it out, since later values would add to it.
	Repeatable bool
	// Set parses v into c. Its errors name the setting and never echo a secret.
	Set func(c *C, v string) error
}

// Apply sets every default of table on c.
func Apply[C any](c *C, table []Setting[C]) error {
	for _, s := range table {
		if s.Default == "" || s.Repeatable {
			continue
		}
		if err := s.Set(c, s.Default); err != nil {
			return fmt.Errorf("default of --%s: %w", s.Flag, err)
		}
	}
	return nil
}

// String returns a Set function that stores v in the field.
func String[C any](field func(*C) *string) func(*C, string) error {
	return func(c *C, v string) error { *field(c) = v; return nil }
}

// Strings returns a Set function that appends v to the field, for repeatable settings.
func Strings[C any](field func(*C) *[]string) func(*C, string) error {
	return func(c *C, v string) error { *field(c) = append(*field(c), v); return nil }
}

// Bool returns a Set function that parses true or false (also 1/0, t/f) into the field.
func Bool[C any](name string, field func(*C) *bool) func(*C, string) error {
	return func(c *C, v string) error {
		b, err := ParseBool(name, v)
		if err != nil {
			return err
		}
		*field(c) = b
		return nil
	}
}

// ParseBool parses true or false (also 1/0, t/f); its error names the setting.
func ParseBool(name, v string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, fmt.Errorf("%s (%q) must be true or false", name, v)
	}
	return b, nil
}

// Int returns a Set function that parses a whole number into the field.
func Int[C any](name string, field func(*C) *int) func(*C, string) error {
	return func(c *C, v string) error {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 0, strconv.IntSize)
		if err != nil {
			return fmt.Errorf("%s (%q) is not a whole number", name, v)
		}
		*field(c) = int(n)
		return nil
	}
}

// Int32 returns a Set function that parses a whole number of at most 32 bits into the field.
func Int32[C any](name string, field func(*C) *int32) func(*C, string) error {
	return func(c *C, v string) error {
		n, err := strconv.ParseInt(strings.TrimSpace(v), 0, 32)
		if err != nil {
			return fmt.Errorf("%s (%q) is not a whole number of at most 32 bits", name, v)
		}
		*field(c) = int32(n)
		return nil
	}
}

// Duration returns a Set function that parses a Go duration ("5s", "1m30s"; also days and
// weeks: "1d", "2w") into the field.
func Duration[C any](name string, field func(*C) *time.Duration) func(*C, string) error {
	return func(c *C, v string) error {
		d, err := str2duration.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%s (%q) is not a duration such as 5s or 1m", name, v)
		}
		*field(c) = d
		return nil
	}
}
