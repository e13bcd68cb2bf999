package settings

import (
	"strings"
	"testing"
	"time"
)

type config struct {
	on    bool
	n     int
	n32   int32
	d     time.Duration
	s     string
	list  []string
	other string
}

func table() []Setting[config] {
	return []Setting[config]{
		{Flag: "on", Default: "true", Bool: true, Set: Bool("--on", func(c *config) *bool { return &c.on })},
		{Flag: "n", Default: "0x10", Set: Int("--n", func(c *config) *int { return &c.n })},
		{Flag: "n32", Default: "7", Set: Int32("--n32", func(c *config) *int32 { return &c.n32 })},
		{Flag: "d", Default: "1d", Set: Duration("--d", func(c *config) *time.Duration { return &c.d })},
		{Flag: "s", Default: "x", Set: String(func(c *config) *string { return &c.s })},
		{Flag: "list", Repeatable: true, Set: Strings(func(c *config) *[]string { return &c.list })},
		{Flag: "other", Set: String(func(c *config) *string { return &c.other })},
	}
}

func TestApplySetsEveryDefault(t *testing.T) {
	var c config
	if err := Apply(&c, table()); err != nil {
		t.Fatal(err)
	}
	if !c.on || c.n != 16 || c.n32 != 7 || c.d != 24*time.Hour || c.s != "x" || c.list != nil || c.other != "" {
		t.Fatalf("%+v", c)
	}
	bad := append(table(), Setting[config]{Flag: "bad", Default: "x", Set: Int("--bad", func(c *config) *int { return &c.n })})
	if err := Apply(&c, bad); err == nil || !strings.Contains(err.Error(), `default of --bad: --bad ("x") is not a whole number`) {
		t.Fatalf("err = %v", err)
	}
}

func TestSetErrorsNameTheSettingAndValue(t *testing.T) {
	for _, tc := range []struct {
		flag, v, want string
	}{
		{"on", "maybe", `--on ("maybe") must be true or false`},
		{"n", "2.5", `--n ("2.5") is not a whole number`},
		{"n32", "4294967296", `--n32 ("4294967296") is not a whole number of at most 32 bits`},
		{"d", "soon", `--d ("soon") is not a duration such as 5s or 1m`},
	} {
		for _, s := range table() {
			if s.Flag != tc.flag {
				continue
			}
			var c config
			if err := s.Set(&c, tc.v); err == nil || err.Error() != tc.want {
				t.Errorf("%s=%s: err = %v, want %s", tc.flag, tc.v, err, tc.want)
			}
		}
	}
}

func TestRepeatableAppends(t *testing.T) {
	var c config
	s := table()[5]
	for _, v := range []string{"a", "b"} {
		if err := s.Set(&c, v); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Join(c.list, ",") != "a,b" {
		t.Fatalf("list = %v", c.list)
	}
}
