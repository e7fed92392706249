package batcher

import (
	"context"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// lanes is how many kinds of write a batcher batches (see Batcher's fields).
const lanes = 5

// stepWriters is how many writers each lane of two-phase steps has. One: every
// reservation and resolution of a shard writes its holding account's balance row, and
// every inbound application and settlement a clearing account's, so their batches take
// turns on those rows whatever the writers; one writer makes the batches twice as big as
// two would, for less CPU per step. (Measured: random transfers between two shards on 2
// cores, 64 clients.) Claims of idempotency keys have one writer too: a claim is one
// small insert, so one writer's batches keep up with the other lanes.
const stepWriters = 1

// request is what every lane's requests are: checked before they join a batch, so that
// nothing they carry can fail their batch.
type request interface{ Validate() error }

// conflict names something no two requests of one batch may share: an idempotency key
// (caller, key), or a thing only one request per batch may decide (caller empty). The
// second request waits for the next batch, where it sees the first one's outcome.
type conflict struct{ caller, key string }

// lane batches one kind of write: its requests queue here and its writers post them,
// many per call of post.
type lane[R request, O any] struct {
	b         *Batcher
	writers   int
	queue     chan *job[R, O]
	post      func(context.Context, []R) ([]O, error)
	conflicts func(R) []conflict
}

type job[R request, O any] struct {
	ctx  context.Context
	req  R
	done chan answer[O] // buffered: the writer never blocks on a caller that went away
}

type answer[O any] struct {
	out O
	err error
}

func newLane[R request, O any](b *Batcher, writers int, post func(context.Context, []R) ([]O, error), conflicts func(R) []conflict) *lane[R, O] {
	return &lane[R, O]{b: b, writers: writers, queue: make(chan *job[R, O], queueLength), post: post, conflicts: conflicts}
}

func (l *lane[R, O]) queued() int { return len(l.queue) }

func (l *lane[R, O]) start() {
	for range l.writers {
		l.b.wg.Add(1)
		go l.write()
	}
}

// submit checks the request, queues it and returns its outcome once its batch
// committed. On an error the outcome is as the lane's post says (store.PostBatch): not
// applied if PostgreSQL refused the batch, unknown if the connection broke on the way (a
// retry with the same idempotency key tells, and never applies it twice).
func (l *lane[R, O]) submit(ctx context.Context, req R) (O, error) {
	var zero O
	if err := req.Validate(); err != nil {
		return zero, err
	}
	j := &job[R, O]{ctx: ctx, req: req, done: make(chan answer[O], 1)}
	if err := enqueue(l.b, l.queue, j, "write"); err != nil {
		return zero, err
	}
	select {
	case a := <-j.done:
		return a.out, a.err
	case <-ctx.Done():
		// If a writer already took it, its outcome is decided and recorded under the
		// idempotency key: a retry replays it.
		return zero, ctx.Err()
	}
}

// write is one writer: collect a batch, post it, answer everyone in it, repeat.
func (l *lane[R, O]) write() {
	defer l.b.wg.Done()
	var carry []*job[R, O] // requests held back because they conflicted with one in a batch
	for {
		batch, next, ok := l.collect(carry)
		carry = next
		batch = dropAbandoned(batch)
		if len(batch) > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), l.b.cfg.Timeout)
			// The batch is decided on its own context: once taken, it commits or fails as
			// a whole, whatever happens to the callers' contexts.
			l.postIsolating(ctx, batch)
			cancel()
		}
		if !ok && len(carry) == 0 {
			return
		}
	}
}

// dropAbandoned answers, unapplied, the requests whose callers gave up while their batch
// was collected (a replay answered from the idempotency cache meanwhile, say), and
// returns the rest.
func dropAbandoned[R request, O any](batch []*job[R, O]) []*job[R, O] {
	kept := batch[:0]
	for _, j := range batch {
		if err := j.ctx.Err(); err != nil {
			j.done <- answer[O]{err: err}
			continue
		}
		kept = append(kept, j)
	}
	return kept
}

// collect takes the carried-over requests, then waits for one more if it has none, then
// takes whatever is queued, lingering briefly while the batch is small. A request that
// conflicts with one already in the batch is carried over to the next batch.
func (l *lane[R, O]) collect(carry []*job[R, O]) (batch, next []*job[R, O], open bool) {
	maxBatch := l.b.cfg.MaxBatch
	seen := make(map[conflict]bool, maxBatch)
	add := func(j *job[R, O]) {
		if j.ctx.Err() != nil {
			j.done <- answer[O]{err: j.ctx.Err()} // never applied: the caller gave up first
			return
		}
		cs := l.conflicts(j.req)
		clash := len(batch) >= maxBatch
		for _, c := range cs {
			clash = clash || seen[c]
		}
		if clash {
			next = append(next, j)
			return
		}
		for _, c := range cs {
			seen[c] = true
		}
		batch = append(batch, j)
	}
	for _, j := range carry {
		add(j)
	}
	open = true
	if len(batch) == 0 && len(next) == 0 {
		j, ok := <-l.queue
		if !ok {
			return nil, nil, false
		}
		add(j)
	}
	var linger <-chan time.Time
	for len(batch) < maxBatch && len(next) == 0 {
		select {
		case j, ok := <-l.queue:
			if !ok {
				return batch, next, false
			}
			add(j)
			continue
		default:
		}
		if linger == nil {
			t := time.NewTimer(l.b.cfg.Linger)
			defer t.Stop()
			linger = t.C
		}
		select {
		case j, ok := <-l.queue:
			if !ok {
				return batch, next, false
			}
			add(j)
		case <-linger:
			return batch, next, true
		}
	}
	return batch, next, open
}

// postIsolating posts the batch and answers everyone in it. If PostgreSQL refuses the
// batch for something a request carried (store.RequestFault), which Validate should have
// made impossible, each half is posted on its own, and so on down to the one request
// that carries the fault: only it gets the error, its neighbours their own outcomes, in
// their arrival order. A batch refused by PostgreSQL applied nothing, so the halves
// start from the same state the whole batch did.
func (l *lane[R, O]) postIsolating(ctx context.Context, batch []*job[R, O]) {
	reqs := make([]R, len(batch))
	for i, j := range batch {
		reqs[i] = j.req
	}
	b := l.b
	start := time.Now()
	outs, err := l.post(ctx, reqs)
	b.busyNanos.Add(uint64(time.Since(start)))
	b.batches.Add(1)
	b.requests.Add(uint64(len(batch)))
	if err != nil && store.RequestFault(err) && ctx.Err() == nil {
		if len(batch) > 1 {
			b.isolations.Add(1)
			mid := len(batch) / 2
			l.postIsolating(ctx, batch[:mid])
			l.postIsolating(ctx, batch[mid:])
			return
		}
		err = ledger.Errorf(ledger.CodeInvalidRequest, "the database refused this request: %v", err)
	}
	for i, j := range batch {
		if err != nil {
			j.done <- answer[O]{err: err}
		} else {
			j.done <- answer[O]{out: outs[i]}
		}
	}
}
