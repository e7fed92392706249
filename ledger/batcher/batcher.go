// Package batcher coalesces concurrent write requests for one shard into batches: one
// database transaction, one round trip, one WAL flush for many requests. While one
// writer's batch commits, the next requests queue up, so the busier the ledger, the
// fuller the batches. Each kind of write has its own lane, queue and writers
// (lanes.go): transactions (tally.post_batch), and the steps of two-phase and cross-shard
// transfers (reservations, resolutions, inbound applications), and claims of idempotency
// keys for requests that run on other shards, because each kind's
// database function takes its locks in its own order and so never shares a database
// transaction with another. Balance reads are coalesced the same way, many per query
// (reads.go).
package batcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// Bounds of batching.
const (
	// DefaultWriters is how many batches of one shard may be in flight at once, each on
	// its own connection: one collects while another commits.
	DefaultWriters = 2
	// DefaultMaxBatch bounds the requests in one database transaction: bigger batches
	// amortise the commit further but hold their locks longer.
	DefaultMaxBatch = 100
	// DefaultLinger is how long a writer with a small batch waits for more requests
	// before it commits; at low load it bounds the latency added.
	DefaultLinger = 500 * time.Microsecond
	// queueLength bounds requests waiting for a writer.
	queueLength = 10000
	// DefaultTimeout bounds one batch's round trip (connecting included), so a hung
	// database fails the batch instead of holding its writer and every request queued
	// behind it: a batch takes milliseconds, and a primary whose processes stopped keeps
	// its connections open, so only a timeout tells. Past it the batch's outcome is
	// unknown (503, retry with the same key). The failover of a hung primary takes about
	// ten seconds; writes resume after it only if no writer is still waiting on the old one.
	DefaultTimeout = 5 * time.Second
	// MaxTimeout bounds Config.Timeout.
	MaxTimeout = time.Minute
	// MaxWriters (also for readers), MaxBatchLimit and MaxLinger bound the configuration.
	MaxWriters    = 16
	MaxBatchLimit = 1000
	MaxLinger     = 50 * time.Millisecond
)

// ErrStopped is returned for requests submitted after the batcher stopped.
var ErrStopped = errors.New("batcher: stopped")

// Config tunes a Batcher; zero fields take the defaults.
type Config struct {
	Writers  int
	MaxBatch int
	Linger   time.Duration
	Readers  int
	Timeout  time.Duration
}

// Resolve returns c with its zero fields set to the defaults, or an error if a field is
// out of bounds.
func (c Config) Resolve() (Config, error) {
	if c.Writers == 0 {
		c.Writers = DefaultWriters
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.Linger == 0 {
		c.Linger = DefaultLinger
	}
	if c.Readers == 0 {
		c.Readers = DefaultReaders
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Writers < 1 || c.Writers > MaxWriters || c.MaxBatch < 1 || c.MaxBatch > MaxBatchLimit || c.Linger < 0 || c.Linger > MaxLinger ||
		c.Readers < 1 || c.Readers > MaxWriters || c.Timeout < 0 || c.Timeout > MaxTimeout {
		return c, fmt.Errorf("batcher: writers and readers must be 1..%d, max batch 1..%d, linger 0..%s, timeout up to %s; got %+v",
			MaxWriters, MaxBatchLimit, MaxLinger, MaxTimeout, c)
	}
	return c, nil
}

// Batcher posts one shard's requests in batches.
type Batcher struct {
	store    *store.Store
	cfg      Config
	posts    *lane[store.Request, ledger.Outcome]
	reserves *lane[store.ReserveRequest, ledger.Outcome]
	resolves *lane[store.ResolveRequest, ledger.Outcome]
	inbound  *lane[store.InboundRequest, store.Inbound]
	claims   *lane[store.Claim, ledger.Outcome]
	reads    chan *balanceRead

	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup

	batches, requests, busyNanos, isolations atomic.Uint64
}

// Stats are a batcher's running totals and its queues now.
type Stats struct {
	Batches  uint64        // batches posted, committed or not
	Requests uint64        // requests in them
	Busy     time.Duration // time spent posting them, summed over the writers
	// Isolations counts batches PostgreSQL refused for one request's sake and that were
	// split to answer that request alone; nonzero means a validation gap to close.
	Isolations uint64
	// QueuedRequests (of every lane) and QueuedReads wait now for a writer and a reader.
	QueuedRequests, QueuedReads int
}

// Stats returns the totals so far (Requests/Batches is the mean batch size) and the
// queues' lengths now.
func (b *Batcher) Stats() Stats {
	return Stats{Batches: b.batches.Load(), Requests: b.requests.Load(), Busy: time.Duration(b.busyNanos.Load()), Isolations: b.isolations.Load(),
		QueuedRequests: b.posts.queued() + b.reserves.queued() + b.resolves.queued() + b.inbound.queued() + b.claims.queued(), QueuedReads: len(b.reads)}
}

// New returns a batcher over the shard's store; Start it before submitting.
func New(st *store.Store, cfg Config) (*Batcher, error) {
	cfg, err := cfg.Resolve()
	if err != nil {
		return nil, err
	}
	b := &Batcher{store: st, cfg: cfg, reads: make(chan *balanceRead, queueLength)}
	b.posts = newLane(b, cfg.Writers, st.PostBatch, func(r store.Request) []conflict { return []conflict{{r.Caller, r.Key}} })
	b.reserves = newLane(b, stepWriters, st.ReserveBatch, func(r store.ReserveRequest) []conflict { return []conflict{{r.Caller, r.Key}} })
	b.resolves = newLane(b, stepWriters, st.ResolveBatch, func(r store.ResolveRequest) []conflict {
		// one resolution of a transfer per batch: the next one finds it resolved
		return []conflict{{r.Caller, r.Key}, {"", r.Pending.String()}}
	})
	b.inbound = newLane(b, stepWriters, st.ApplyInboundBatch, func(r store.InboundRequest) []conflict { return []conflict{{"", r.Transfer.ID.String()}} })
	b.claims = newLane(b, stepWriters, st.ClaimKeys, func(c store.Claim) []conflict { return []conflict{{c.Caller, c.Key}} })
	return b, nil
}

// Conns is how many connections a batcher of this configuration holds at most: one per
// writer of each lane, and one per reader.
func (c Config) Conns() int { return c.Writers + (lanes-1)*stepWriters + c.Readers }

// Start runs the writers and readers until Stop.
func (b *Batcher) Start() {
	b.posts.start()
	b.reserves.start()
	b.resolves.start()
	b.inbound.start()
	b.claims.start()
	for range b.cfg.Readers {
		b.wg.Add(1)
		go b.read()
	}
}

// Stop lets the queued requests and reads finish, then stops the writers and readers.
func (b *Batcher) Stop() {
	b.mu.Lock()
	if !b.stopped {
		b.stopped = true
		close(b.posts.queue)
		close(b.reserves.queue)
		close(b.resolves.queue)
		close(b.inbound.queue)
		close(b.claims.queue)
		close(b.reads)
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// PostTransaction checks the request (store.Request.Validate: nothing that could fail its
// batch gets in), queues it and returns its outcome once its batch committed. On an error
// the outcome is as store.PostBatch says: not applied if PostgreSQL refused the batch,
// unknown if the connection broke on the way (a retry with the same idempotency key
// tells, and never applies it twice).
func (b *Batcher) PostTransaction(ctx context.Context, req store.Request) (ledger.Outcome, error) {
	return b.posts.submit(ctx, req)
}

// Reserve makes a pending transfer in a batch of reservations (store.ReserveBatch); the
// outcome is as for PostTransaction.
func (b *Batcher) Reserve(ctx context.Context, st store.Step, r store.Reservation) (ledger.Outcome, error) {
	return b.reserves.submit(ctx, store.ReserveRequest{Step: st, Reservation: r})
}

// Resolve resolves a pending transfer in a batch of resolutions (store.ResolveBatch).
func (b *Batcher) Resolve(ctx context.Context, st store.Step, pending ledger.TransactionID, how ledger.Resolution, amount int64) (ledger.Outcome, error) {
	return b.resolves.submit(ctx, store.ResolveRequest{Step: st, Pending: pending, How: how, Amount: amount})
}

// ApplyInbound applies a transfer from another shard in a batch of them
// (store.ApplyInboundBatch).
func (b *Batcher) ApplyInbound(ctx context.Context, pt ledger.PendingTransfer, tx ledger.TransactionID, created time.Time, clearingID ledger.AccountID) (store.Inbound, error) {
	return b.inbound.submit(ctx, store.InboundRequest{Transfer: pt, Tx: tx, Created: created, ClearingID: clearingID})
}

// ClaimKey claims an idempotency key at its home shard, this one, in a batch of claims
// (store.ClaimKeys).
func (b *Batcher) ClaimKey(ctx context.Context, c store.Claim) (ledger.Outcome, error) {
	return b.claims.submit(ctx, c)
}

// enqueue hands v to the writers or readers through ch, unless the batcher has stopped
// or ch is full; the lock orders it against Stop closing ch.
func enqueue[T any](b *Batcher, ch chan<- T, v T, what string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.stopped {
		return ErrStopped
	}
	select {
	case ch <- v:
		return nil
	default:
		return ledger.Errorf(ledger.CodeUnavailable, "the shard's %s queue is full", what)
	}
}
