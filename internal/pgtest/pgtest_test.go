package pgtest

import (
	"context"
	"os"
	"testing"
	"time"
)

var cluster *Cluster

func TestMain(m *testing.M) { os.Exit(Main(m, &cluster, Options{})) }

func TestClusterStopStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := cluster.QueryInt(ctx, "SELECT count(*) FROM pg_extension WHERE extname = 'plpgsql'")
	if err != nil || n != 1 {
		t.Fatalf("query: n=%d err=%v", n, err)
	}
	if err := cluster.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"); err != nil {
		t.Fatalf("pg_stat_statements should be available: %v", err)
	}
	cluster.RequireControl(t)
	if err := cluster.Stop("immediate"); err != nil {
		t.Fatal(err)
	}
	if _, err := cluster.QueryInt(ctx, "SELECT 1"); err == nil {
		t.Fatal("query succeeded against a stopped server")
	}
	if err := cluster.StartAgain(); err != nil {
		t.Fatal(err)
	}
	if n, err := cluster.QueryInt(ctx, "SELECT 1"); err != nil || n != 1 {
		t.Fatalf("after restart: n=%d err=%v", n, err)
	}
}
