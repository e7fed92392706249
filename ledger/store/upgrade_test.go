package store_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/store"
)

// An upgrade from the previous release's schema with traffic running: transfers flow
// through a batcher while the latest migration is applied under them, none fails, every
// invariant holds after, and the upgrade rule lets a binary of either version serve the
// new schema (a ledger pod restarting mid-upgrade, an operator rolled back).
func TestUpgradeFromPreviousSchemaUnderTraffic(t *testing.T) {
	pgtest.NewDB(t) // the service's login role exists once a template was made
	db := pgtest.NewEmptyDB(t)
	ctx := context.Background()
	super := db.SuperConn(t)
	previous := migrations.Count() - 1
	if v, err := migrations.ApplyTo(ctx, super, previous); err != nil || v != previous {
		t.Fatalf("previous schema: %d %v", v, err)
	}
	if err := migrations.SetShard(ctx, super, 0); err != nil {
		t.Fatal(err)
	}
	if err := migrations.GrantLogin(ctx, super, pgtest.AppRole); err != nil {
		t.Fatal(err)
	}
	if err := migrations.CheckCompatible(previous, migrations.Count()); err == nil {
		t.Error("a binary must refuse a schema older than its own")
	}
	st := store.New(db.AppPool(t, 8))
	f := &fixture{t: t, db: db, store: st}
	extID, _ := ledger.NewAccountID(0)
	var err error
	if _, f.external, _, err = st.RegisterAsset(ctx, "USD", 2, extID); err != nil {
		t.Fatalf("register USD: %v", err)
	}
	accounts := make([]ledger.AccountID, 8)
	for i := range accounts {
		accounts[i] = f.account(fmt.Sprint("o", i), 0)
		f.post(fmt.Sprint("fund", i), usd(f.external, accounts[i], 1000))
	}
	b, err := batcher.New(st, batcher.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	defer b.Stop()

	var migrated atomic.Bool
	var applied, failed atomic.Int64
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			// Each worker keeps transferring until the migration is in and it has made
			// 20 more transfers on the new schema.
			after := 0
			for n := 0; after < 20; n++ {
				if migrated.Load() {
					after++
				}
				from, to := accounts[(w+n)%len(accounts)], accounts[(w+n+1)%len(accounts)]
				out, err := b.PostTransaction(ctx, request(t, fmt.Sprint("w", w, "-", n), usd(from, to, 1)))
				if err != nil || out.Status != 201 {
					failed.Add(1)
					t.Errorf("transfer during the upgrade: %v %d %s", err, out.Status, out.Body)
					return
				}
				applied.Add(1)
			}
		})
	}
	if v, err := migrations.Apply(ctx, super); err != nil || v != migrations.Count() {
		t.Fatalf("upgrade: %d %v", v, err)
	}
	migrated.Store(true)
	wg.Wait()
	if applied.Load() < 80 || failed.Load() > 0 {
		t.Errorf("%d applied, %d failed", applied.Load(), failed.Load())
	}
	f.verify()
	if err := migrations.CheckCompatible(migrations.Count(), previous); err != nil {
		t.Errorf("the previous release's binary must serve the new schema: %v", err)
	}
	if err := migrations.CheckCompatible(migrations.Count()+1, previous); err == nil {
		t.Error("a binary must refuse a schema two versions ahead")
	}
	// A rolled-back binary's migration leaves the newer schema as it is.
	if v, err := migrations.ApplyTo(ctx, super, previous); err != nil || v != migrations.Count() {
		t.Errorf("migrate from the previous release: %d %v", v, err)
	}
}
