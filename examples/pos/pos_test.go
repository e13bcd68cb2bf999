package pos

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &cluster, pgtest.Options{})) }

func newStore(t *testing.T) (*Store, *pool.Manager) {
	t.Helper()
	cfg := pool.DefaultConfig()
	cfg.DatabaseURL = cluster.URL("")
	cfg.MaxConns, cfg.MinConns = 6, 1
	cfg.RetryAttempts, cfg.RetryDelay, cfg.RetryMaxDelay = 5, 5*time.Millisecond, 50*time.Millisecond
	cfg.SlowQueryThreshold = 100 * time.Millisecond
	cfg.MetricsLogInterval = 0
	m, err := pool.New(cfg, pool.WithLogger(slog.New(slog.DiscardHandler)), pool.WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	s := NewStore(m)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Seed(ctx, 50, 20); err != nil {
		t.Fatal(err)
	}
	return s, m
}

func TestServices(t *testing.T) {
	s, m := newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	products, err := s.GetProducts(ctx, 10)
	if err != nil || len(products) != 10 || products[0].Category == "" {
		t.Fatalf("products: %v %+v", err, products)
	}
	before, _ := cluster.QueryInt(ctx, "SELECT quantity FROM inventory WHERE product_id = 3")
	sale, err := s.CreateSale(ctx, 1, "CARD", []SaleItem{{ProductID: 3, Quantity: 4}, {ProductID: 4, Quantity: 1}})
	if err != nil || sale.Items != 2 || sale.Total <= 0 {
		t.Fatalf("sale: %v %+v", err, sale)
	}
	after, _ := cluster.QueryInt(ctx, "SELECT quantity FROM inventory WHERE product_id = 3")
	if before-after != 4 {
		t.Fatalf("inventory went from %d to %d, want -4", before, after)
	}
	if _, err := s.CreateSale(ctx, 1, "CARD", []SaleItem{{ProductID: 3, Quantity: 2_000_000}}); !errors.Is(err, ErrOutOfStock) {
		t.Fatalf("oversell: %v", err)
	}
	if n, _ := cluster.QueryInt(ctx, "SELECT count(*) FROM sales WHERE status <> 'COMPLETED'"); n != 0 {
		t.Fatalf("%d half-written sales survived a rollback", n)
	}

	if _, err := s.CreateProduct(ctx, "Espresso", 1, 2.5, 10); err != nil {
		t.Fatal(err)
	}
	_, err = s.CreateProduct(ctx, "Espresso", 1, 2.5, 10)
	var pgErr *pgconn.PgError
	var re *pool.RetryError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || !errors.As(err, &re) || re.Attempts != 1 {
		t.Fatalf("duplicate product: %v", err)
	}

	rows, err := s.GetSalesReport(ctx, time.Now().Add(-time.Hour), time.Now().Add(time.Hour), 0)
	if err != nil || len(rows) != 1 || rows[0].Sales != 1 {
		t.Fatalf("report: %v %+v", err, rows)
	}
	errs := s.BulkUpdatePrices(ctx, []PriceUpdate{{5, 9.99}, {6, 19.99}, {7, 29.99}}, 2)
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if n, _ := cluster.QueryInt(ctx, "SELECT count(*) FROM products WHERE price IN (9.99, 19.99, 29.99) AND id IN (5,6,7)"); n != 3 {
		t.Fatalf("%d prices updated, want 3", n)
	}
	if st := m.Stats(); st.Queries.Count == 0 || st.Queries.BySQLState["23505"] != 1 {
		t.Fatalf("pool stats: %+v", st.Queries)
	}
}

func TestTrafficProducesEveryKindOfSignal(t *testing.T) {
	s, m := newStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan *TrafficStats, 1)
	go func() {
		done <- RunTraffic(ctx, s, TrafficOptions{Workers: 6, Pause: 5 * time.Millisecond, SlowReportEvery: 2, SlowReport: 150 * time.Millisecond})
	}()
	ok := pgtest.WaitFor(90*time.Second, func() bool {
		st := m.Stats()
		return st.Queries.BySQLState["23505"] > 0 && st.SlowQueries > 0 && st.Queries.ByOperation["update"] > 0 &&
			st.Queries.ByOperation["insert"] > 0
	})
	cancel()
	st := <-done
	if !ok {
		t.Fatalf("traffic did not produce violations, slow queries and writes: %+v", m.Stats().Queries)
	}
	if st.Operations.Load() == 0 || st.Failures.Load() == 0 {
		t.Fatalf("operations %d, failures %d", st.Operations.Load(), st.Failures.Load())
	}
}
