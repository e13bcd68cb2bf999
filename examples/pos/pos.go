// Package pos is a small point-of-sale application (ProductService, SalesService) written on
// the pool library: sales in a Transaction with an inventory decrement, reports with
// ExecuteWithRetry and bulk price updates with BatchExecute. The demo's traffic generator
// drives it.
package pos

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgsidecar/pgsidecar/pool"
)

//go:embed schema.sql
var schema string

// ErrOutOfStock is returned by CreateSale when an item's inventory is too low.
var ErrOutOfStock = errors.New("out of stock")

// Store holds the point-of-sale services on one pool.
type Store struct {
	db *pool.Manager
}

// NewStore returns the services on m.
func NewStore(m *pool.Manager) *Store { return &Store{db: m} }

// Migrate creates the schema if it does not exist.
func (s *Store) Migrate(ctx context.Context) error {
	return s.db.ExecuteWithRetry(ctx, func(ctx context.Context) error {
		_, err := s.db.Pool().Exec(ctx, schema)
		return err
	})
}

// Seed fills categories, products with stock and customers, unless products exist already.
func (s *Store) Seed(ctx context.Context, products, customers int) error {
	return s.db.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, "SELECT count(*) FROM products").Scan(&n); err != nil || n > 0 {
			return err
		}
		for _, c := range []string{"Beverages", "Bakery", "Dairy", "Produce", "Household"} {
			if _, err := tx.Exec(ctx, "INSERT INTO categories (name) VALUES ($1)", c); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO products (name, category_id, price)
			SELECT 'Product ' || g, 1 + g % 5, round((1 + random() * 49)::numeric, 2)
			FROM generate_series(1, $1) g`, products); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO inventory SELECT id, 1000000 FROM products"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `
			INSERT INTO customers (name, email)
			SELECT 'Customer ' || g, 'customer' || g || '@example.com' FROM generate_series(1, $1) g`, customers)
		return err
	}, pool.TxOptions{Timeout: time.Minute})
}

// Product is a row of products with its category name.
type Product struct {
	ID       int
	Name     string
	Category string
	Price    float64
}

// GetProducts lists active products with their category, retried on transient errors
// (ProductService.getProducts).
func (s *Store) GetProducts(ctx context.Context, limit int) ([]Product, error) {
	return pool.ExecuteWithRetryValue(ctx, s.db, func(ctx context.Context) ([]Product, error) {
		rows, err := s.db.Pool().Query(ctx, `
			SELECT p.id, p.name, c.name, p.price::float8
			FROM products p JOIN categories c ON c.id = p.category_id
			WHERE p.is_active ORDER BY p.id LIMIT $1`, limit)
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Product, error) {
			var p Product
			err := r.Scan(&p.ID, &p.Name, &p.Category, &p.Price)
			return p, err
		})
	})
}

// CreateProduct inserts a product and its inventory row in one transaction (as
// ProductService.createProduct). A duplicate name fails with SQLSTATE 23505 and is not retried.
func (s *Store) CreateProduct(ctx context.Context, name string, categoryID int, price float64, initialQty int) (int, error) {
	var id int
	err := s.db.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, "INSERT INTO products (name, category_id, price) VALUES ($1, $2, $3) RETURNING id",
			name, categoryID, price).Scan(&id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "INSERT INTO inventory (product_id, quantity) VALUES ($1, $2)", id, initialQty)
		return err
	}, pool.TxOptions{})
	return id, err
}

// SaleItem is one line of a sale.
type SaleItem struct {
	ProductID int
	Quantity  int
}

// Sale is a created sale.
type Sale struct {
	ID    int
	Total float64
	Items int
}

// CreateSale records a sale, its items and the inventory decrements in one SERIALIZABLE
// transaction (as SalesService.createSale, with timeout 15 s and maxWait 8 s).
// Concurrent sales of the same product conflict now and then; Transaction runs them again.
func (s *Store) CreateSale(ctx context.Context, customerID int, payment string, items []SaleItem) (Sale, error) {
	var sale Sale
	err := s.db.Transaction(ctx, func(ctx context.Context, tx pgx.Tx) error {
		sale = Sale{Items: len(items)}
		if err := tx.QueryRow(ctx, "INSERT INTO sales (customer_id, total, payment_method, status) VALUES ($1, 0, $2, 'PENDING') RETURNING id",
			customerID, payment).Scan(&sale.ID); err != nil {
			return err
		}
		for _, it := range items {
			var price float64
			if err := tx.QueryRow(ctx, "SELECT price::float8 FROM products WHERE id = $1", it.ProductID).Scan(&price); err != nil {
				return fmt.Errorf("product %d: %w", it.ProductID, err)
			}
			tag, err := tx.Exec(ctx, "UPDATE inventory SET quantity = quantity - $2 WHERE product_id = $1 AND quantity >= $2",
				it.ProductID, it.Quantity)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return fmt.Errorf("product %d: %w", it.ProductID, ErrOutOfStock)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO sale_items (sale_id, product_id, quantity, price, subtotal) VALUES ($1, $2, $3, $4, $5)",
				sale.ID, it.ProductID, it.Quantity, price, price*float64(it.Quantity)); err != nil {
				return err
			}
			sale.Total += price * float64(it.Quantity)
		}
		_, err := tx.Exec(ctx, "UPDATE sales SET total = $2, status = 'COMPLETED' WHERE id = $1", sale.ID, sale.Total)
		return err
	}, pool.TxOptions{Timeout: 15 * time.Second, MaxWait: 8 * time.Second, IsoLevel: pgx.Serializable})
	return sale, err
}

// ReportRow is one day of the sales report.
type ReportRow struct {
	Day     time.Time
	Sales   int
	Revenue float64
}

// GetSalesReport sums sales per day in [start, end] (getSalesReport). slow adds a
// deliberate pause so the demo shows a slow query now and then.
func (s *Store) GetSalesReport(ctx context.Context, start, end time.Time, slow time.Duration) ([]ReportRow, error) {
	return pool.ExecuteWithRetryValue(ctx, s.db, func(ctx context.Context) ([]ReportRow, error) {
		rows, err := s.db.Pool().Query(ctx, `
			SELECT date_trunc('day', s.created_at), count(*)::int, coalesce(sum(s.total), 0)::float8
			FROM sales s, pg_sleep($3::float8)
			WHERE s.created_at BETWEEN $1 AND $2
			GROUP BY 1 ORDER BY 1 DESC`, start, end, slow.Seconds())
		if err != nil {
			return nil, err
		}
		return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ReportRow, error) {
			var rr ReportRow
			err := r.Scan(&rr.Day, &rr.Sales, &rr.Revenue)
			return rr, err
		})
	})
}

// PriceUpdate sets one product's price.
type PriceUpdate struct {
	ProductID int
	Price     float64
}

// BulkUpdatePrices applies price updates in batches of batchSize with BatchExecute, each update
// retried on its own (the batch operations example). It returns one error per update.
func (s *Store) BulkUpdatePrices(ctx context.Context, updates []PriceUpdate, batchSize int) []error {
	ops := make([]func(context.Context) (int64, error), len(updates))
	for i, u := range updates {
		ops[i] = func(ctx context.Context) (int64, error) {
			return pool.ExecuteWithRetryValue(ctx, s.db, func(ctx context.Context) (int64, error) {
				tag, err := s.db.Pool().Exec(ctx, "UPDATE products SET price = $2, last_updated = now() WHERE id = $1",
					u.ProductID, u.Price)
				return tag.RowsAffected(), err
			})
		}
	}
	res := pool.BatchExecute(ctx, s.db, ops, batchSize)
	errs := make([]error, len(res))
	for i, r := range res {
		errs[i] = r.Err
	}
	return errs
}
