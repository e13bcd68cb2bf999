package pool_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgsidecar/pgsidecar/internal/pgtest"
	"github.com/pgsidecar/pgsidecar/pool"
)

// exampleURL is the test cluster's URL; the examples run against a real server.
func exampleURL() string { return os.Getenv(pgtest.URLEnv) }

// One Manager per process, configured from the environment
// (DATABASE_URL, DB_MAX_CONNECTIONS, ...), with metrics on a Prometheus registry.
func Example() {
	cfg, err := pool.FromEnv(func(k string) (string, bool) {
		if k == "DATABASE_URL" {
			return exampleURL(), true
		}
		return os.LookupEnv(k)
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	cfg.MinConns = 1
	db, err := pool.New(cfg, pool.WithRegisterer(prometheus.NewRegistry()), pool.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer db.Close()

	var n int
	err = db.Pool().QueryRow(context.Background(), "SELECT 40 + 2").Scan(&n)
	fmt.Println(n, err)
	// Output: 42 <nil>
}

// ExecuteWithRetry: transient errors (serialization failures, deadlocks, a restarting
// server) are retried with backoff; a unique violation is not.
func ExampleManager_ExecuteWithRetry() {
	db := exampleManager()
	defer db.Close()
	ctx := context.Background()

	products, err := pool.ExecuteWithRetryValue(ctx, db, func(ctx context.Context) ([]string, error) {
		rows, err := db.Pool().Query(ctx, "SELECT name FROM (VALUES ('tea'), ('coffee')) p(name) ORDER BY name")
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, pgx.RowTo[string])
	})
	fmt.Println(products, err)
	// Output: [coffee tea] <nil>
}

// Transaction with a timeout and a bound on the wait for a connection: commit on success,
// rollback on error or panic, the whole function retried on serialization failure or deadlock.
func ExampleManager_Transaction() {
	db := exampleManager()
	defer db.Close()
	ctx := context.Background()

	var saleID int
	err := db.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "CREATE TEMP TABLE sale (id int)"); err != nil {
			return err
		}
		return tx.QueryRow(ctx, "INSERT INTO sale VALUES (7) RETURNING id").Scan(&saleID)
	}, pool.TxOptions{Timeout: 10 * time.Second, MaxWait: 5 * time.Second})
	fmt.Println(saleID, err)
	// Output: 7 <nil>
}

// BatchExecute with chunks of 10: operations run in chunks, results in input order.
func ExampleBatchExecute() {
	db := exampleManager()
	defer db.Close()

	ops := make([]func(context.Context) (int, error), 5)
	for i := range ops {
		ops[i] = func(ctx context.Context) (int, error) {
			var v int
			err := db.Pool().QueryRow(ctx, "SELECT $1::int * 10", i).Scan(&v)
			return v, err
		}
	}
	for _, r := range pool.BatchExecute(context.Background(), db, ops, 2) {
		fmt.Print(r.Value, " ")
	}
	fmt.Println()
	// Output: 0 10 20 30 40
}

// Many small statements in one round trip on one connection.
func ExampleManager_ExecPipeline() {
	db := exampleManager()
	defer db.Close()

	ctx := context.Background()
	if _, err := db.Pool().Exec(ctx, "CREATE TABLE IF NOT EXISTS audit (msg text)"); err != nil {
		fmt.Println(err)
		return
	}
	tags, err := db.ExecPipeline(ctx, []pool.Statement{
		{SQL: "INSERT INTO audit VALUES ($1)", Args: []any{"price changed"}},
		{SQL: "INSERT INTO audit VALUES ($1)", Args: []any{"stock counted"}},
		{SQL: "DELETE FROM audit"},
	})
	fmt.Println(len(tags), tags[2].RowsAffected(), err)
	// Output: 3 2 <nil>
}

func exampleManager() *pool.Manager {
	cfg := pool.DefaultConfig()
	cfg.DatabaseURL = exampleURL()
	cfg.MinConns = 1
	db, err := pool.New(cfg, pool.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		panic(err)
	}
	return db
}

// ReloadPassword after a password rotation: the secret holding DATABASE_URL was updated (here
// with the same password, so nothing changes), and connections opened from now on log in with
// what it gives. Reset replaces the open ones as they become idle.
func ExampleManager_ReloadPassword() {
	db := exampleManager()
	defer db.Close()

	changed, err := db.ReloadPassword(exampleURL()) // e.g. the file of DATABASE_URL_FILE, read again
	if err != nil {
		fmt.Println(err) // another host, user or database: refused, the old password stays
		return
	}
	if changed {
		db.Pool().Reset()
	}
	fmt.Println(changed)
	// Output: false
}
