package pos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// TrafficOptions shape the demo load.
type TrafficOptions struct {
	Workers int           // concurrent clients (default 4)
	Pause   time.Duration // pause between one worker's operations (default 50ms)
	// SlowReportEvery makes every Nth report deliberately slow (default 20; 0 keeps the default).
	SlowReportEvery int
	SlowReport      time.Duration // how slow (default 1.2 s, past the 1 s slow query threshold)
	Products        int           // product ids to pick from (default 50)
	Customers       int           // customer ids to pick from (default 20)
}

// TrafficStats counts what the generator did.
type TrafficStats struct {
	Operations, Failures atomic.Int64
}

// RunTraffic runs a point-of-sale mix until ctx is done: product listings, sales on a small hot
// set of products (so serializable transactions conflict and get retried), new products with
// names that repeat (unique violations), bulk price updates, daily reports, and a slow report
// now and then. Every dashboard panel gets something to show.
func RunTraffic(ctx context.Context, s *Store, o TrafficOptions) *TrafficStats {
	if o.Workers <= 0 {
		o.Workers = 4
	}
	if o.Pause <= 0 {
		o.Pause = 50 * time.Millisecond
	}
	if o.SlowReportEvery <= 0 {
		o.SlowReportEvery = 20
	}
	if o.SlowReport <= 0 {
		o.SlowReport = 1200 * time.Millisecond
	}
	if o.Products < 3 {
		o.Products = 50 // the hot set is products 1 and 2; updates pick from the rest
	}
	if o.Customers <= 0 {
		o.Customers = 20
	}
	st := &TrafficStats{}
	var reports atomic.Int64
	var wg sync.WaitGroup
	for w := range o.Workers {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for ctx.Err() == nil {
				err := step(ctx, s, o, r, &reports)
				st.Operations.Add(1)
				if err != nil && ctx.Err() == nil {
					st.Failures.Add(1)
				}
				t := time.NewTimer(o.Pause/2 + time.Duration(r.Int64N(int64(o.Pause))))
				select {
				case <-ctx.Done():
					t.Stop()
				case <-t.C:
				}
			}
		})
	}
	wg.Wait()
	return st
}

func step(ctx context.Context, s *Store, o TrafficOptions, r *rand.Rand, reports *atomic.Int64) error {
	switch n := r.IntN(100); {
	case n < 40:
		_, err := s.GetProducts(ctx, 20)
		return err
	case n < 72:
		// Two hot products get most of the sales, so concurrent sales conflict.
		items := []SaleItem{{ProductID: 1 + r.IntN(2), Quantity: 1 + r.IntN(3)}}
		if r.IntN(2) == 0 {
			items = append(items, SaleItem{ProductID: 1 + r.IntN(o.Products), Quantity: 1})
		}
		_, err := s.CreateSale(ctx, 1+r.IntN(o.Customers), []string{"CASH", "CARD", "MOBILE"}[r.IntN(3)], items)
		return err
	case n < 80:
		// Names repeat on purpose: the second time is a unique violation (23505).
		_, err := s.CreateProduct(ctx, fmt.Sprintf("Seasonal item %d", r.IntN(30)), 1+r.IntN(5), 1+float64(r.IntN(2000))/100, 100)
		return err
	case n < 88:
		ups := make([]PriceUpdate, 5)
		for i := range ups {
			ups[i] = PriceUpdate{ProductID: 3 + r.IntN(o.Products-2), Price: 1 + float64(r.IntN(5000))/100}
		}
		return errors.Join(s.BulkUpdatePrices(ctx, ups, 5)...)
	case n < 96:
		var slow time.Duration
		if reports.Add(1)%int64(o.SlowReportEvery) == 0 {
			slow = o.SlowReport
		}
		_, err := s.GetSalesReport(ctx, time.Now().Add(-24*time.Hour), time.Now(), slow)
		return err
	default:
		// A sale of a product that does not exist: a foreign key or not-found error.
		_, err := s.CreateSale(ctx, 1, "CARD", []SaleItem{{ProductID: 1_000_000 + r.IntN(10), Quantity: 1}})
		return err
	}
}
