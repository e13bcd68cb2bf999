package collector

import (
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

func TestRoles(t *testing.T) {
	ctx := ctxTimeout(t, 10*time.Second)
	if err := cluster.Exec(ctx, "DROP ROLE IF EXISTS limited_role; CREATE ROLE limited_role CONNECTION LIMIT 7"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(ctxTimeout(t, 10*time.Second), "DROP ROLE IF EXISTS limited_role") })
	e := newEnv(t, "", only("roles"))
	s := e.scrape(t, 0, 20*time.Second)
	collectorOK(t, s, "roles")
	checkFamily(t, s, "pg_roles_connection_limit", dto.MetricType_GAUGE, "rolname")
	if got := s.value(t, "pg_roles_connection_limit", map[string]string{"rolname": "limited_role"}); got != 7 {
		t.Errorf("limited_role = %v, want 7", got)
	}
	if got := s.value(t, "pg_roles_connection_limit", map[string]string{"rolname": "postgres"}); got != -1 {
		t.Errorf("postgres = %v, want -1 (no limit)", got)
	}
}
