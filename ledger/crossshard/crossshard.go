// Package crossshard drives transfers between shards to completion. No lock and no
// transaction spans two PostgreSQL instances: each step is one local, idempotent
// transaction on one shard, and the durable records the steps leave are all a driver
// needs to take the transfer on from wherever it stopped.
//
//  1. Reserve (source shard): a pending transfer from the source account, reserved for
//     the source shard's clearing account for the destination shard, naming the
//     destination account (tally.reserve with a remote account). Done by shardset.
//  2. Apply (destination shard): once per transfer id, the amount from the destination
//     shard's clearing account for the source shard to the destination account, or a
//     recorded refusal (tally.apply_inbound).
//  3. Resolve (source shard): settle (post all of it to the clearing account) if it was
//     applied, return it (void) if refused (tally.resolve).
//
// Any replica may drive any transfer at any time, concurrently with others: applying is
// decided once by the destination (its record and its lock on the id), and resolving once
// by the source (the pending record's row lock), so a second driver is told what the
// first did. Money is conserved at every instant: what left the source sits in its
// holding account until step 3, and a clearing pair owes each other exactly what was
// applied but not yet settled.
package crossshard

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// Point names a place between steps where a test may stop a driver, as a crash would.
type Point string

// Crash points, after each step that writes.
const (
	AfterApply   Point = "after-apply"
	AfterResolve Point = "after-resolve"
)

// Caller is the caller a driver's own writes are recorded as.
const Caller = "tally:crossshard"

// Writer is the way to one shard for the driver's writes: the shard's Store (one
// database transaction per step), or a batcher in front of it.
type Writer interface {
	ApplyInbound(ctx context.Context, pt ledger.PendingTransfer, tx ledger.TransactionID, created time.Time, clearingID ledger.AccountID) (store.Inbound, error)
	Resolve(ctx context.Context, st store.Step, pending ledger.TransactionID, how ledger.Resolution, amount int64) (ledger.Outcome, error)
}

// Driver completes transfers between shards.
type Driver struct {
	shards  []*store.Store
	writers []Writer
	now     func() time.Time
	// Stop, when set, is asked at each Point and ends the drive with its error: tests
	// use it to leave a transfer where a crash would.
	Stop func(Point) error
}

// New returns a driver over the shards, by shard index, writing through writers (nil:
// straight to the stores).
func New(shards []*store.Store, writers []Writer, now func() time.Time) *Driver {
	if writers == nil {
		for _, st := range shards {
			writers = append(writers, st)
		}
	}
	return &Driver{shards: shards, writers: writers, now: now}
}

func (d *Driver) shard(i int) (*store.Store, Writer, error) {
	if i < 0 || i >= len(d.shards) || i >= len(d.writers) {
		return nil, nil, ledger.Errorf(ledger.CodeUnavailable, "shard %d is not known to this ledger replica yet; retry shortly", i)
	}
	return d.shards[i], d.writers[i], nil
}

func (d *Driver) stop(p Point) error {
	if d.Stop == nil {
		return nil
	}
	return d.Stop(p)
}

// Result is where a transfer between shards ended, or stands.
type Result struct {
	Transfer ledger.PendingTransfer
	// Refusal is the destination's problem document when it refused the transfer (the
	// transfer is then voided, its money back at the source).
	Refusal []byte
}

// Complete takes the transfer id (a pending transfer on its source shard, to another
// shard) to its end and returns it: applied and settled, or refused and returned. A
// transfer already ended is only read.
func (d *Driver) Complete(ctx context.Context, id ledger.TransactionID) (Result, error) {
	src, srcW, err := d.shard(id.Shard())
	if err != nil {
		return Result{}, err
	}
	pt, err := src.PendingTransfer(ctx, id)
	if err != nil {
		return Result{}, err
	}
	if pt.Remote == (ledger.AccountID{}) {
		return Result{}, fmt.Errorf("crossshard: transfer %s stays on shard %d", id, id.Shard())
	}
	dst, dstW, err := d.shard(pt.Remote.Shard())
	if err != nil {
		return Result{}, err
	}
	if pt.State != ledger.StatePending {
		return d.ended(ctx, dst, pt)
	}
	tx, err := ledger.NewTransactionID(pt.Remote.Shard())
	if err != nil {
		return Result{}, err
	}
	clearing, err := ledger.NewAccountID(pt.Remote.Shard())
	if err != nil {
		return Result{}, err
	}
	in, err := dstW.ApplyInbound(ctx, pt, tx, d.now().UTC().Truncate(time.Microsecond), clearing)
	if err != nil {
		return Result{}, fmt.Errorf("crossshard: apply %s on shard %d: %w", id, pt.Remote.Shard(), err)
	}
	if err := d.stop(AfterApply); err != nil {
		return Result{}, err
	}
	how := ledger.ResolveSettle
	if !in.Applied {
		how = ledger.ResolveReturn
	}
	step, err := d.step(id, how)
	if err != nil {
		return Result{}, err
	}
	out, err := srcW.Resolve(ctx, step, id, how, 0)
	if err != nil {
		return Result{}, fmt.Errorf("crossshard: %s %s on shard %d: %w", how, id, id.Shard(), err)
	}
	if out.Status != http.StatusCreated && problemCode(out.Body) != ledger.CodeTransferResolved {
		return Result{}, fmt.Errorf("crossshard: %s %s refused: %s", how, id, out.Body)
	}
	if err := d.stop(AfterResolve); err != nil {
		return Result{}, err
	}
	if pt, err = src.PendingTransfer(ctx, id); err != nil {
		return Result{}, err
	}
	return d.ended(ctx, dst, pt)
}

// ended reads the destination's answer for a transfer its source has resolved.
func (d *Driver) ended(ctx context.Context, dst *store.Store, pt ledger.PendingTransfer) (Result, error) {
	r := Result{Transfer: pt}
	if pt.State != ledger.StateVoided {
		return r, nil
	}
	in, found, err := dst.InboundOutcome(ctx, pt.ID)
	if err != nil {
		return r, err
	}
	if !found || in.Applied {
		return r, fmt.Errorf("crossshard: transfer %s was returned but shard %d says it %s", pt.ID, pt.Remote.Shard(),
			map[bool]string{false: "never saw it", true: "applied it"}[found])
	}
	r.Refusal = in.Problem
	return r, nil
}

// step is the driver's resolution of a transfer: one key per transfer and outcome, so
// drivers racing on it replay each other.
func (d *Driver) step(id ledger.TransactionID, how ledger.Resolution) (store.Step, error) {
	tx, err := ledger.NewTransactionID(id.Shard())
	if err != nil {
		return store.Step{}, err
	}
	key := string(how) + ":" + id.String()
	return store.Step{Caller: Caller, Key: key, Hash: sha256.Sum256([]byte(key)), ID: tx, CreatedAt: d.now().UTC().Truncate(time.Microsecond)}, nil
}

// Resume completes, on every shard, up to limit transfers to other shards that have been
// in flight since before olderThan ago (so that the replica that took the request has had
// its chance), and returns how many it completed. Errors of one shard do not stop the
// others.
func (d *Driver) Resume(ctx context.Context, olderThan time.Duration, limit int) (int, error) {
	before := d.now().Add(-olderThan)
	done := 0
	var errs []error
	for i, st := range d.shards {
		ids, err := st.InFlight(ctx, before, limit)
		if err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", i, err))
			continue
		}
		for _, id := range ids {
			if _, err := d.Complete(ctx, id); err != nil {
				errs = append(errs, err)
				continue
			}
			done++
		}
	}
	return done, errors.Join(errs...)
}

func problemCode(body []byte) ledger.Code {
	var p struct{ Code ledger.Code }
	_ = json.Unmarshal(body, &p)
	return p.Code
}
