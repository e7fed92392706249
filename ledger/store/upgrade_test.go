package store_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/store"
)

// An upgrade from the previous release's schema with traffic running: transfers flow
// from the previous release's service while the latest migration is applied under them,
// none fails, every invariant holds after, and the upgrade rule lets a binary of either
// version serve the new schema (a ledger pod restarting mid-upgrade, an operator rolled
// back).
//
// From the previous release's schema, which the rule covers, and from the one before it
// too, so that the partitioning migration (014), which locks the journal, keeps being
// applied under traffic now that it is no longer the latest.
func TestUpgradeFromPreviousSchemaUnderTraffic(t *testing.T) {
	for _, back := range []int32{1, 2} {
		t.Run(fmt.Sprintf("from %d", migrations.Count()-back), func(t *testing.T) {
			upgradeUnderTraffic(t, migrations.Count()-back)
		})
	}
}

func upgradeUnderTraffic(t *testing.T, previous int32) {
	pgtest.NewDB(t) // the service's login role exists once a template was made
	db := pgtest.NewEmptyDB(t)
	ctx := context.Background()
	super := db.SuperConn(t)
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
	pool := db.AppPool(t, 8)
	st := store.New(pool)
	f := &fixture{t: t, db: db, store: st}
	extID, _ := ledger.NewAccountID(0)
	var err error
	if _, f.external, _, err = st.RegisterAsset(ctx, "USD", 2, extID); err != nil {
		t.Fatalf("register USD: %v", err)
	}
	old := previousRelease{t: t, pool: pool}
	accounts := make([]ledger.AccountID, 8)
	for i := range accounts {
		accounts[i] = old.openAccount(fmt.Sprint("o", i))
		old.mustPost(request(t, fmt.Sprint("fund", i), usd(f.external, accounts[i], 1000)), 201, false)
	}

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
				outs, err := old.post(request(t, fmt.Sprint("w", w, "-", n), usd(from, to, 1)))
				if err != nil || outs[0].Status != 201 {
					failed.Add(1)
					t.Errorf("transfer during the upgrade: %v %+v", err, outs)
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

	// Replays across the versions. The previous release replays what it posted, before
	// and after the migration, with the bodies it sent.
	first := old.mustPost(request(t, "after", usd(accounts[4], accounts[5], 1)), 201, false)
	if again := old.mustPost(request(t, "after", usd(accounts[4], accounts[5], 1)), 201, true); string(again.Body) != string(first.Body) {
		t.Errorf("previous release's replay answered %s, first %s", again.Body, first.Body)
	}
	old.mustPost(request(t, "fund0", usd(f.external, accounts[0], 1000)), 201, true)
	// The previous release still opens accounts (of one slot) and moves money to them.
	late := old.openAccount("late")
	old.mustPost(request(t, "to-late", usd(accounts[6], late, 3)), 201, false)
	// This binary replays a record the previous release wrote with its body.
	if out, err := st.PostTransaction(ctx, request(t, "fund1", usd(f.external, accounts[1], 1000))); err != nil ||
		out.Status != 201 || !out.Replayed || out.Body == nil {
		t.Errorf("replay of the previous release's record: %v %+v", err, out)
	}
	// A record this binary wrote keeps no body: the previous release cannot render it, so
	// that one request is told to retry and its batch neighbour still applies.
	fresh := request(t, "new", usd(accounts[0], accounts[1], 5))
	if out, err := st.PostTransaction(ctx, fresh); err != nil || out.Status != 201 || out.Replayed {
		t.Fatalf("post with this binary: %v %+v", err, out)
	}
	outs, err := old.post(request(t, "new", usd(accounts[0], accounts[1], 5)), request(t, "neighbour", usd(accounts[2], accounts[3], 5)))
	if err != nil || outs[0].Status != 503 || !strings.Contains(string(outs[0].Body), `"code":"unavailable"`) || outs[1].Status != 201 {
		t.Errorf("previous release replaying this binary's record: %v %+v", err, outs)
	}
	f.verify()
	if err := migrations.CheckCompatible(previous+1, previous); err != nil {
		t.Errorf("a binary must serve the next schema: %v", err)
	}
	if err := migrations.CheckCompatible(previous+2, previous); err == nil {
		t.Error("a binary must refuse a schema two versions ahead")
	}
	// A rolled-back binary's migration leaves the newer schema as it is.
	if v, err := migrations.ApplyTo(ctx, super, previous); err != nil || v != migrations.Count() {
		t.Errorf("migrate from the previous release: %d %v", v, err)
	}
}

// previousRelease posts as the previous release's service did: post_batch with the
// rendered responses as its seventh argument, stored for replays and answered back.
type previousRelease struct {
	t    *testing.T
	pool *pgxpool.Pool
}

func (p previousRelease) post(reqs ...store.Request) ([]ledger.Outcome, error) {
	args := store.BatchArgs(reqs)
	bodies := make([]string, len(reqs))
	for i, r := range reqs {
		bodies[i] = string(r.Body)
	}
	args = append(args[:6:6], append([]any{bodies}, args[6:]...)...)
	rows, err := p.pool.Query(context.Background(), "SELECT status, body, replayed FROM tally.post_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ORDER BY req", args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (ledger.Outcome, error) {
		var o ledger.Outcome
		var body string
		err := row.Scan(&o.Status, &body, &o.Replayed)
		o.Body = []byte(body)
		return o, err
	})
}

// openAccount opens an account as the previous release did: its row and one balance row.
func (p previousRelease) openAccount(owner string) ledger.AccountID {
	p.t.Helper()
	id, err := ledger.NewAccountID(0)
	if err != nil {
		p.t.Fatal(err)
	}
	if _, err := p.pool.Exec(context.Background(), `
		WITH a AS (
			INSERT INTO tally.accounts (id, owner, asset, scale, balance_floor, metadata)
			SELECT $1, $2, code, scale, 0, '{}' FROM tally.assets WHERE code = 'USD' RETURNING *
		) INSERT INTO tally.balances (account_id, floor) SELECT id, balance_floor FROM a`, [16]byte(id), owner); err != nil {
		p.t.Fatalf("previous release opening an account: %v", err)
	}
	return id
}

// mustPost posts one request and checks its status and whether it was a replay; a 201
// must answer a transaction's body, the one sent when it was first posted.
func (p previousRelease) mustPost(req store.Request, status int, replayed bool) ledger.Outcome {
	p.t.Helper()
	outs, err := p.post(req)
	if err != nil || outs[0].Status != status || outs[0].Replayed != replayed ||
		(status == 201 && !strings.HasPrefix(string(outs[0].Body), `{"id":"`)) {
		p.t.Fatalf("previous release posting %s: %v %+v", req.Key, err, outs)
	}
	return outs[0]
}
