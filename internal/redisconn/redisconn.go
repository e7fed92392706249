// Package redisconn is the ledger's connection to Redis, which it uses only for what may
// be lost (rate limits, the idempotency fast path): calls that fail within milliseconds,
// a breaker that skips Redis for a while once it failed, so a sick Redis costs a request
// nothing after the first few, and concurrent commands sent together.
package redisconn

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Sizes of the batching of commands.
const (
	// senders is how many pipelines may be on their way at once.
	senders = 2
	// maxPipeline bounds the commands of one pipeline.
	maxPipeline = 256
)

// Client is the ledger's Redis: the go-redis client, the breaker its users share, and
// the batching of their commands. Under load every request would otherwise pay Redis,
// and this process, a write and a read of its own; batched, the requests of a moment
// share them.
type Client struct {
	Redis   redis.UniversalClient
	Breaker *Breaker
	queue   chan call
	stop    chan struct{}
	closing sync.Once
	wg      sync.WaitGroup
}

type call struct {
	cmd   redis.Cmder
	done  chan struct{}   // closed once sent (Do)
	after func(err error) // called once sent (Send)
}

// New returns a client of rdb, whose timeouts bound each call (Options sets them); Close
// stops it (not rdb).
func New(rdb redis.UniversalClient, breaker *Breaker) *Client {
	c := &Client{Redis: rdb, Breaker: breaker, queue: make(chan call, 4*maxPipeline), stop: make(chan struct{})}
	for range senders {
		c.wg.Add(1)
		go c.send()
	}
	return c
}

// Close stops the batching; commands still waiting fail. Closing again does nothing.
func (c *Client) Close() {
	c.closing.Do(func() { close(c.stop) })
	c.wg.Wait()
}

// Do runs the command in the next pipeline on its way and returns its error. Only when
// that is nil may the command's result be read: ctx bounds the wait, not the round trip
// (the client's timeouts bound that), so after ctx's error the command may still be on
// its way.
func (c *Client) Do(ctx context.Context, cmd redis.Cmder) error {
	done := make(chan struct{})
	select {
	case c.queue <- call{cmd: cmd, done: done}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.stop:
		return redis.ErrClosed
	}
	select {
	case <-done:
		return cmd.Err()
	case <-ctx.Done():
		return ctx.Err()
	case <-c.stop:
		return redis.ErrClosed
	}
}

// Send queues the command for the next pipeline and returns at once, for a command
// nobody waits for (keeping a cache entry); after, if not nil, gets its error once it
// was sent. It reports false, sending nothing, when the queue is full or the client
// closed: what only a cache would have held may be lost.
func (c *Client) Send(cmd redis.Cmder, after func(err error)) bool {
	select {
	case <-c.stop:
		return false
	default:
	}
	select {
	case c.queue <- call{cmd: cmd, after: after}:
		return true
	default:
		return false
	}
}

// send pipelines what is waiting: the first command, and every one that arrived while
// the last pipeline was on its way.
func (c *Client) send() {
	defer c.wg.Done()
	batch := make([]call, 0, maxPipeline)
	for {
		select {
		case <-c.stop:
			return
		case first := <-c.queue:
			batch = append(batch[:0], first)
		}
	more:
		for len(batch) < maxPipeline {
			select {
			case next := <-c.queue:
				batch = append(batch, next)
			default:
				break more
			}
		}
		pipe := c.Redis.Pipeline()
		for _, b := range batch {
			_ = pipe.Process(context.Background(), b.cmd)
		}
		_, _ = pipe.Exec(context.Background()) // each command holds its own error
		for _, b := range batch {
			if b.done != nil {
				close(b.done)
			}
			if b.after != nil {
				b.after(b.cmd.Err())
			}
		}
	}
}

// Defaults of Options and of Breaker.
const (
	// CallTimeout bounds each read and write of a call.
	CallTimeout = 100 * time.Millisecond
	// dialTimeout bounds a connection, outside any request's few milliseconds: a request
	// that had to wait for one would otherwise give up, and so would the next.
	dialTimeout = time.Second
	// DefaultCooldown is how long Redis is skipped once it failed a call.
	DefaultCooldown = 5 * time.Second
)

// Options reads a redis:// or rediss:// URL into a client's options whose calls fail
// within milliseconds (CallTimeout for each read and write, never waiting for a pooled
// connection, never retried), and which keeps connections ready so that no request
// dials. A non-empty password overrides the URL's, so it need not be in any argument.
func Options(url, password string) (*redis.Options, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redisconn: redis URL: %w", err)
	}
	if password != "" {
		opts.Password = password
	}
	opts.ReadTimeout, opts.WriteTimeout, opts.PoolTimeout = CallTimeout, CallTimeout, CallTimeout
	opts.DialTimeout = dialTimeout
	opts.MinIdleConns = max(opts.MinIdleConns, 2)
	opts.MaxRetries = -1 // a failed call falls back at once; a retry would double its cost
	return opts, nil
}

// Breaker skips Redis for a cooldown after a call failed. Every user of one Redis shares
// one Breaker, so what one learns the others need not pay for again.
type Breaker struct {
	cooldown time.Duration
	log      *slog.Logger

	mu        sync.Mutex
	openUntil time.Time
}

// NewBreaker returns a closed breaker (DefaultCooldown when cooldown is not positive).
func NewBreaker(cooldown time.Duration, log *slog.Logger) *Breaker {
	if cooldown <= 0 {
		cooldown = DefaultCooldown
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Breaker{cooldown: cooldown, log: log}
}

// Open reports whether Redis is being skipped now.
func (b *Breaker) Open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return time.Now().Before(b.openUntil)
}

// Fail records that a call failed: Redis is skipped for the cooldown from now. The first
// failure after a quiet spell is logged, with what the callers do meanwhile.
func (b *Breaker) Fail(err error, meanwhile string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if time.Now().After(b.openUntil) {
		b.log.Warn("Redis did not answer: "+meanwhile, "for", b.cooldown, "err", err.Error())
	}
	b.openUntil = time.Now().Add(b.cooldown)
}
