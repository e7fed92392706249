package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// BenchmarkPostTransfer measures transfers through the store, one database round trip
// each, with 16 concurrent clients: "uniform" picks random accounts among 1,000, "hot"
// sends every transfer from one account. It reports transfers/s; it asserts nothing.
func BenchmarkPostTransfer(b *testing.B) {
	const accounts, clients = 1000, 16
	// Set up once: b.Run calls its function again for each b.N it tries.
	f := newFixture(b, clients+2)
	ids := make([]ledger.AccountID, accounts)
	for i := range ids {
		ids[i] = benchAccount(b, f, i)
	}
	var seq atomic.Int64
	for _, scenario := range []string{"uniform", "hot"} {
		b.Run(scenario, func(b *testing.B) {
			b.SetParallelism((clients + 1) / 2)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				rng := rand.New(rand.NewPCG(uint64(seq.Add(1)), 7))
				for pb.Next() {
					from, to := rng.IntN(accounts), rng.IntN(accounts-1)
					if scenario == "hot" {
						from, to = 0, 1+rng.IntN(accounts-1)
					} else if to >= from {
						to++
					}
					req := request(b, fmt.Sprintf("b%d", seq.Add(1)), usd(ids[from], ids[to], 1))
					out, err := f.store.PostTransaction(context.Background(), req)
					if err != nil || out.Status != 201 {
						b.Errorf("transfer: %v %d %s", err, out.Status, out.Body)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "transfers/s")
		})
	}
}

func benchAccount(b testing.TB, f *fixture, i int) ledger.AccountID {
	id, err := ledger.NewAccountID(0)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := f.store.CreateAccount(context.Background(), ledger.Account{ID: id, Owner: fmt.Sprint("bench-", i), Asset: "USD"}); err != nil {
		b.Fatal(err)
	}
	out, err := f.store.PostTransaction(context.Background(), request(b, fmt.Sprint("seed-", i), usd(f.external, id, 1<<40)))
	if err != nil || out.Status != 201 {
		b.Fatalf("seed: %v %s", err, out.Body)
	}
	return id
}

// BenchmarkPostBatch measures one post_batch call of different sizes (uniform transfers
// among 1,000 accounts) on one connection: the database's cost per batch and per
// transfer, without any client concurrency.
func BenchmarkPostBatch(b *testing.B) {
	const accounts = 1000
	f := newFixture(b, 4)
	ids := make([]ledger.AccountID, accounts)
	for i := range ids {
		ids[i] = benchAccount(b, f, i)
	}
	var seq atomic.Int64
	for _, size := range []int{1, 10, 50, 100} {
		b.Run(fmt.Sprint("size=", size), func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, uint64(size)))
			for b.Loop() {
				reqs := make([]store.Request, size)
				for i := range reqs {
					from, to := rng.IntN(accounts), rng.IntN(accounts-1)
					if to >= from {
						to++
					}
					reqs[i] = request(b, fmt.Sprintf("pb%d", seq.Add(1)), usd(ids[from], ids[to], 1))
				}
				if _, err := f.store.PostBatch(context.Background(), reqs); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "transfers/s")
		})
	}
}
