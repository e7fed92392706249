package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Defaults of Config.
const (
	DefaultBatch   = 1000
	DefaultPoll    = 20 * time.Millisecond
	DefaultStandby = time.Second
	// SessionTimeout is how long a relay's session may say nothing before PostgreSQL
	// ends it, which gives its turn to a standby: a relay that hangs (stopped, cut off)
	// loses its turn within this, plus a standby's wait.
	SessionTimeout = 5 * time.Second
	maxBackoff     = 5 * time.Second
)

// turnLock is the advisory lock (per database, so per shard) whose holder publishes.
const turnLock int64 = 0x74616c6c7972656c // "tallyrel"

// ErrLostTurn means another relay published this shard's events meanwhile.
var ErrLostTurn = errors.New("events: another relay published this shard's events meanwhile")

// Config says which shard a Relay publishes, and where to.
type Config struct {
	Shard   int           // the shard's index, checked against its database
	DSN     string        // the shard's primary, as a member of the tally_relay role
	Client  *kgo.Client   // the producer; shared by the relays of a cluster's shards
	Topic   string        // where the events go
	Batch   int           // most events per round; DefaultBatch when 0
	Poll    time.Duration // the wait when the outbox is empty; DefaultPoll when 0
	Standby time.Duration // how often a standby asks for the turn; DefaultStandby when 0
	Log     *slog.Logger
	Metrics *Metrics // nil: none
}

func (c Config) withDefaults() Config {
	if c.Batch <= 0 {
		c.Batch = DefaultBatch
	}
	if c.Poll <= 0 {
		c.Poll = DefaultPoll
	}
	if c.Standby <= 0 {
		c.Standby = DefaultStandby
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	c.Log = c.Log.With("shard", c.Shard)
	return c
}

// Run publishes the shard's events while it holds the shard's turn, and waits for the
// turn as a standby otherwise, until ctx ends. A database or Kafka failure is logged
// and retried with backoff; nothing is skipped: an event leaves the outbox only once
// Kafka acknowledged it.
func Run(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	m := cfg.Metrics.forShard(cfg.Shard)
	backoff := newBackoff()
	for ctx.Err() == nil {
		published, err := turn(ctx, cfg, m)
		m.active.Set(0)
		if ctx.Err() != nil {
			return nil
		}
		if published {
			backoff.reset()
		}
		cfg.Log.Warn("event relay stopped publishing; trying again", "err", err, "in", backoff.peek())
		if !backoff.sleep(ctx) {
			return nil
		}
	}
	return nil
}

// turn connects, waits for the turn, and publishes until something fails. It reports
// whether it published anything, so a relay that works between failures starts over
// without a long backoff.
func turn(ctx context.Context, cfg Config, m shardMetrics) (bool, error) {
	lock, err := pgx.Connect(ctx, cfg.DSN)
	if err != nil {
		return false, fmt.Errorf("events: connect: %w", err)
	}
	defer lock.Close(context.WithoutCancel(ctx))
	// A relay that stops talking (stopped, hung, cut off) loses its session, and so the
	// turn, within SessionTimeout; the live one pings well within it.
	if _, err := lock.Exec(ctx, fmt.Sprintf("SET idle_session_timeout = %d", SessionTimeout.Milliseconds())); err != nil {
		return false, fmt.Errorf("events: set idle_session_timeout: %w", err)
	}
	for {
		var got bool
		if err := lock.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", turnLock).Scan(&got); err != nil {
			return false, fmt.Errorf("events: ask for the turn: %w", err)
		}
		if got {
			break
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(cfg.Standby):
		}
	}
	cfg.Log.Info("event relay has the turn: publishing")
	m.active.Set(1)

	work, cancel := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		cancel(keepTurn(work, lock))
	}()
	defer func() { cancel(nil); wg.Wait() }() // before the lock's session closes

	conn, err := pgx.Connect(work, cfg.DSN)
	if err != nil {
		return false, fmt.Errorf("events: connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	p, err := newPublisher(work, cfg, m, conn)
	if err != nil {
		return false, err
	}
	err = p.run(work)
	if cause := context.Cause(work); cause != nil && ctx.Err() == nil {
		err = cause
	}
	return p.published > 0, err
}

// keepTurn pings the session holding the turn so it never looks idle, until ctx ends or
// the session fails (then the turn may already be another relay's).
func keepTurn(ctx context.Context, lock *pgx.Conn) error {
	t := time.NewTicker(SessionTimeout / 5)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := lock.Exec(ctx, "SELECT 1"); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("events: the session holding the turn failed: %w", err)
			}
		}
	}
}

// publisher moves one shard's events from its outbox to Kafka, in order.
type publisher struct {
	cfg       Config
	m         shardMetrics
	conn      *pgx.Conn
	ledger    uuid.UUID // the shard database's identity, which event ids derive from
	published int64     // events published and recorded in this turn
	measured  time.Time // when the lag and backlog were last measured
	// acknowledged is the last sequence of the batch Kafka acknowledged and the next
	// round records (nil: none), of acknowledgedEvents events.
	acknowledged       *int64
	acknowledgedEvents int
}

func newPublisher(ctx context.Context, cfg Config, m shardMetrics, conn *pgx.Conn) (*publisher, error) {
	var shard int
	var ledger uuid.UUID
	err := conn.QueryRow(ctx, "SELECT s.shard_index, i.id FROM tally.shard s, tally.ledger_identity i").Scan(&shard, &ledger)
	if err != nil {
		return nil, fmt.Errorf("events: read the shard's index and identity: %w", err)
	}
	if shard != cfg.Shard {
		return nil, fmt.Errorf("events: the database holds shard %d, not %d", shard, cfg.Shard)
	}
	return &publisher{cfg: cfg, m: m, conn: conn, ledger: ledger}, nil
}

// run publishes rounds until one fails. Stopped, it records the batch Kafka acknowledged
// last, so the next relay does not send it again.
func (p *publisher) run(ctx context.Context) error {
	defer func() {
		if p.acknowledged != nil && p.conn != nil {
			flush, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
			defer cancel()
			if rows, err := p.conn.Query(flush, "SELECT sequence FROM tally.outbox_next($1, 0)", p.acknowledged); err == nil {
				rows.Close()
			}
		}
	}()
	backoff := newBackoff()
	for {
		more, err := p.round(ctx)
		switch {
		case errors.Is(err, ErrLostTurn) || ctx.Err() != nil:
			return err
		case errors.Is(err, errKafka):
			// Kafka is down or refusing: the events wait in the outbox; ask again later.
			p.m.errors.Inc()
			p.cfg.Log.Warn("publishing events failed; they wait in the outbox", "err", err, "retry_in", backoff.peek())
			if !backoff.sleep(ctx) {
				return ctx.Err()
			}
			continue
		case err != nil:
			return err
		}
		backoff.reset()
		if !more {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(p.cfg.Poll):
			}
		}
	}
}

var errKafka = errors.New("kafka")

// round records the batch Kafka acknowledged last (if any), publishes the next one (the
// one numbered before and not yet acknowledged, or the next committed events) and
// reports whether it was a full batch (more may be waiting).
func (p *publisher) round(ctx context.Context) (bool, error) {
	if time.Since(p.measured) >= time.Second {
		if err := p.measure(ctx); err != nil {
			return false, err
		}
	}
	rows, err := p.conn.Query(ctx, readNext, p.acknowledged, p.cfg.Batch)
	if err != nil {
		return false, fmt.Errorf("events: read the next events: %w", err)
	}
	lines, err := pgx.CollectRows(rows, pgx.RowToStructByPos[outboxLine])
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == lostTurn {
		return false, ErrLostTurn
	}
	if err != nil {
		return false, fmt.Errorf("events: read the next events: %w", err)
	}
	if p.acknowledged != nil {
		p.published += int64(p.acknowledgedEvents)
		p.acknowledged = nil
	}
	if len(lines) == 0 {
		return false, nil
	}
	batch, err := assemble(lines)
	if err != nil {
		return false, err
	}
	var recs []*kgo.Record
	for i, row := range batch {
		if i > 0 && row.Sequence != batch[i-1].Sequence+1 {
			return false, fmt.Errorf("events: event %d follows %d: the batch has a gap", row.Sequence, batch[i-1].Sequence)
		}
		rs, err := records(p.cfg.Topic, p.cfg.Shard, p.ledger, row)
		if err != nil {
			return false, err
		}
		recs = append(recs, rs...)
	}
	if err := p.cfg.Client.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return false, fmt.Errorf("%w: produce %d records: %w", errKafka, len(recs), err)
	}
	through := batch[len(batch)-1].Sequence
	p.acknowledged, p.acknowledgedEvents = &through, len(batch) // recorded by the next round
	p.m.published.Add(float64(len(batch)))
	p.m.records.Add(float64(len(recs)))
	return len(batch) == p.cfg.Batch, nil
}

// lostTurn is the SQLSTATE outbox_next raises for a batch another relay published.
const lostTurn = "TLY01"

// measure sets the lag and backlog metrics (once a second: counting a long backlog is
// not free).
func (p *publisher) measure(ctx context.Context) error {
	var published, waiting int64
	var oldest *time.Time
	if err := p.conn.QueryRow(ctx, "SELECT published, waiting, oldest FROM tally.outbox_backlog()").Scan(&published, &waiting, &oldest); err != nil {
		return fmt.Errorf("events: measure the backlog: %w", err)
	}
	p.measured = time.Now()
	p.m.backlog.Set(float64(waiting))
	if oldest == nil {
		p.m.lag.Set(0)
	} else {
		p.m.lag.Set(max(0, time.Since(*oldest).Seconds()))
	}
	return nil
}

// backoff doubles a wait from 100 ms up to maxBackoff.
type backoff struct{ next time.Duration }

func newBackoff() *backoff { return &backoff{next: 100 * time.Millisecond} }

func (b *backoff) reset()              { b.next = 100 * time.Millisecond }
func (b *backoff) peek() time.Duration { return b.next }

// sleep waits the current backoff and doubles it; false when ctx ended first.
func (b *backoff) sleep(ctx context.Context) bool {
	t := time.NewTimer(b.next)
	defer t.Stop()
	b.next = min(2*b.next, maxBackoff)
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// RunShards runs a relay for each shard (dsns in shard order), with cfg for all but Shard
// and DSN, until ctx ends.
func RunShards(ctx context.Context, dsns []string, cfg Config) error {
	var wg sync.WaitGroup
	for i, dsn := range dsns {
		c := cfg
		c.Shard, c.DSN = i, dsn
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = Run(ctx, c) // it returns only when ctx ends
		}()
	}
	wg.Wait()
	return nil
}
