package api

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// TestReadmeExamples keeps the README's JSON examples true to the response types: each must
// decode into its section's type without unknown fields, and show every field of it.
func TestReadmeExamples(t *testing.T) {
	doc, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]any{
		"Kubernetes probes":                          struct{ Status, UptimeSeconds any }{},
		"GET /api/database/metrics":                  MetricsResponse{},
		"GET /api/database/detailed-metrics":         DetailedMetricsResponse{},
		"GET /api/database/health":                   HealthResponse{},
		"GET /api/database/performance":              PerformanceResponse{},
		"GET /api/database/statements?fingerprint=…": StatementDetailResponse{},
		"GET /api/database/live-metrics":             LiveSnapshot{},
		"POST /api/database/warmup":                  WarmupResponse{},
	}
	block := regexp.MustCompile("(?s)```json\n(.*?)```")
	checked := map[string]bool{}
	for _, sec := range strings.Split(string(doc), "\n### ")[1:] {
		title, body, _ := strings.Cut(sec, "\n")
		for _, m := range block.FindAllStringSubmatch(body, -1) {
			var fields map[string]any
			if err := json.Unmarshal([]byte(m[1]), &fields); err != nil {
				t.Fatalf("%s: example is not JSON: %v\n%s", title, err, m[1])
			}
			if _, isErr := fields["error"]; isErr && len(fields) == 1 {
				continue // an error answer: {"error": "..."}
			}
			typ, ok := types[title]
			if !ok {
				t.Fatalf("README section %q has a JSON example but no type in this test", title)
			}
			v := reflect.New(reflect.TypeOf(typ))
			dec := json.NewDecoder(bytes.NewReader([]byte(m[1])))
			dec.DisallowUnknownFields()
			if err := dec.Decode(v.Interface()); err != nil {
				t.Errorf("%s: example does not match %T: %v", title, typ, err)
			}
			rt := reflect.TypeOf(typ)
			for i := range rt.NumField() {
				name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
				if name == "" {
					name = strings.ToLower(rt.Field(i).Name[:1]) + rt.Field(i).Name[1:]
				}
				if _, ok := fields[name]; !ok && !strings.Contains(rt.Field(i).Tag.Get("json"), "omitempty") {
					t.Errorf("%s: example lacks field %q", title, name)
				}
			}
			checked[title] = true
		}
	}
	for title := range types {
		if !checked[title] {
			t.Errorf("README has no JSON example under %q", title)
		}
	}
}
