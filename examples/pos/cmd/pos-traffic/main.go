// Command pos-traffic creates the point-of-sale schema and runs the demo traffic against
// DATABASE_URL through the pool library, printing a line of totals every few seconds.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/pgsidecar/pgsidecar/examples/pos"
	"github.com/pgsidecar/pgsidecar/pool"
)

func main() {
	workers := flag.Int("workers", 4, "concurrent clients")
	duration := flag.Duration("duration", 0, "stop after this long (0: until interrupted)")
	flag.Parse()
	cfg, err := pool.FromEnv(os.LookupEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pos-traffic:", err)
		os.Exit(2)
	}
	cfg.Name = "pos-traffic"
	cfg.ApplicationName = "pos-traffic"
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	m, err := pool.New(cfg, pool.WithLogger(logger))
	if err != nil {
		fmt.Fprintln(os.Stderr, "pos-traffic:", err)
		os.Exit(1)
	}
	defer m.Close()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	store := pos.NewStore(m)
	setup, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := store.Migrate(setup); err != nil {
		fmt.Fprintln(os.Stderr, "pos-traffic: migrate:", err)
		os.Exit(1)
	}
	if err := store.Seed(setup, 50, 20); err != nil {
		fmt.Fprintln(os.Stderr, "pos-traffic: seed:", err)
		os.Exit(1)
	}
	done := make(chan *pos.TrafficStats, 1)
	go func() { done <- pos.RunTraffic(ctx, store, pos.TrafficOptions{Workers: *workers}) }()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case st := <-done:
			fmt.Printf("pos-traffic: done: %d operations, %d failed (failures are part of the demo)\n",
				st.Operations.Load(), st.Failures.Load())
			return
		case <-tick.C:
			s := m.Stats()
			fmt.Printf("pos-traffic: %d queries, %.1f%% errors, p95 %s, %d slow, %d retries\n",
				s.Queries.Count, s.Queries.ErrorRate*100, s.Queries.P95.Round(time.Microsecond), s.SlowQueries, s.Retries)
		}
	}
}
