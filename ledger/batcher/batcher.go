// Package batcher coalesces concurrent transaction requests for one shard into batches,
// each posted with one call to tally.post_batch: one database transaction, one round
// trip, one WAL flush for many requests. While one writer's batch commits, the next
// requests queue up, so the busier the ledger, the fuller the batches. Balance reads are
// coalesced the same way, many per query (reads.go).
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

type result struct {
	out ledger.Outcome
	err error
}

type pending struct {
	ctx  context.Context
	req  store.Request
	done chan result // buffered: the writer never blocks on a caller that went away
}

// Batcher posts one shard's requests in batches.
type Batcher struct {
	store *store.Store
	cfg   Config
	queue chan *pending
	reads chan *balanceRead

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
	// QueuedRequests and QueuedReads wait now for a writer and a reader.
	QueuedRequests, QueuedReads int
}

// Stats returns the totals so far (Requests/Batches is the mean batch size) and the
// queues' lengths now.
func (b *Batcher) Stats() Stats {
	return Stats{Batches: b.batches.Load(), Requests: b.requests.Load(), Busy: time.Duration(b.busyNanos.Load()), Isolations: b.isolations.Load(),
		QueuedRequests: len(b.queue), QueuedReads: len(b.reads)}
}

// New returns a batcher over the shard's store; Start it before submitting.
func New(st *store.Store, cfg Config) (*Batcher, error) {
	cfg, err := cfg.Resolve()
	if err != nil {
		return nil, err
	}
	return &Batcher{store: st, cfg: cfg, queue: make(chan *pending, queueLength), reads: make(chan *balanceRead, queueLength)}, nil
}

// Start runs the writers and readers until Stop.
func (b *Batcher) Start() {
	for range b.cfg.Writers {
		b.wg.Add(1)
		go b.write()
	}
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
		close(b.queue)
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
	if err := req.Validate(); err != nil {
		return ledger.Outcome{}, err
	}
	p := &pending{ctx: ctx, req: req, done: make(chan result, 1)}
	if err := enqueue(b, b.queue, p, "write"); err != nil {
		return ledger.Outcome{}, err
	}
	select {
	case r := <-p.done:
		return r.out, r.err
	case <-ctx.Done():
		// If a writer already took it, its outcome is decided and recorded under the
		// idempotency key: a retry replays it.
		return ledger.Outcome{}, ctx.Err()
	}
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

type idemKey struct{ caller, key string }

// write is one writer: collect a batch, post it, answer everyone in it, repeat.
func (b *Batcher) write() {
	defer b.wg.Done()
	var carry []*pending // requests held back because their key was already in a batch
	for {
		batch, next, ok := b.collect(carry)
		carry = next
		if len(batch) > 0 {
			b.post(batch)
		}
		if !ok && len(carry) == 0 {
			return
		}
	}
}

// collect takes the carried-over requests, then waits for one more if it has none, then
// takes whatever is queued, lingering briefly while the batch is small. A second request
// with a key already in the batch is carried over to the next batch, where it replays
// the first one's committed outcome.
func (b *Batcher) collect(carry []*pending) (batch, next []*pending, open bool) {
	seen := make(map[idemKey]bool, b.cfg.MaxBatch)
	add := func(p *pending) {
		if p.ctx.Err() != nil {
			p.done <- result{err: p.ctx.Err()} // never applied: the caller gave up first
			return
		}
		k := idemKey{p.req.Caller, p.req.Key}
		if seen[k] || len(batch) >= b.cfg.MaxBatch {
			next = append(next, p)
			return
		}
		seen[k] = true
		batch = append(batch, p)
	}
	for _, p := range carry {
		add(p)
	}
	open = true
	if len(batch) == 0 && len(next) == 0 {
		p, ok := <-b.queue
		if !ok {
			return nil, nil, false
		}
		add(p)
	}
	var linger <-chan time.Time
	for len(batch) < b.cfg.MaxBatch && len(next) == 0 {
		select {
		case p, ok := <-b.queue:
			if !ok {
				return batch, next, false
			}
			add(p)
			continue
		default:
		}
		if linger == nil {
			t := time.NewTimer(b.cfg.Linger)
			defer t.Stop()
			linger = t.C
		}
		select {
		case p, ok := <-b.queue:
			if !ok {
				return batch, next, false
			}
			add(p)
		case <-linger:
			return batch, next, true
		}
	}
	return batch, next, open
}

func (b *Batcher) post(batch []*pending) {
	// The batch is decided on its own context: once taken, it commits or fails as a
	// whole, whatever happens to the callers' contexts.
	ctx, cancel := context.WithTimeout(context.Background(), b.cfg.Timeout)
	defer cancel()
	b.postIsolating(ctx, batch)
}

// postIsolating posts the batch and answers everyone in it. If PostgreSQL refuses the
// batch for something a request carried (store.RequestFault), which Validate should have
// made impossible, each half is posted on its own, and so on down to the one request
// that carries the fault: only it gets the error, its neighbours their own outcomes, in
// their arrival order. A batch refused by PostgreSQL applied nothing, so the halves
// start from the same state the whole batch did.
func (b *Batcher) postIsolating(ctx context.Context, batch []*pending) {
	reqs := make([]store.Request, len(batch))
	for i, p := range batch {
		reqs[i] = p.req
	}
	start := time.Now()
	outs, err := b.store.PostBatch(ctx, reqs)
	b.busyNanos.Add(uint64(time.Since(start)))
	b.batches.Add(1)
	b.requests.Add(uint64(len(batch)))
	if err != nil && store.RequestFault(err) && ctx.Err() == nil {
		if len(batch) > 1 {
			b.isolations.Add(1)
			mid := len(batch) / 2
			b.postIsolating(ctx, batch[:mid])
			b.postIsolating(ctx, batch[mid:])
			return
		}
		err = ledger.Errorf(ledger.CodeInvalidRequest, "the database refused this request: %v", err)
	}
	for i, p := range batch {
		if err != nil {
			p.done <- result{err: err}
		} else {
			p.done <- result{out: outs[i]}
		}
	}
}
