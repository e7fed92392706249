package redisconn_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tallyhq/tally/internal/redistest"
)

// TestConcurrentCommandsShareRoundTrips: commands sent at once each get their own
// answer, and fewer round trips than commands carry them.
func TestConcurrentCommandsShareRoundTrips(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	ctx := context.Background()
	for i := range 200 {
		if err := c.Redis.Set(ctx, "k"+strconv.Itoa(i), i, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	pipelines := &countPipelines{}
	c.Redis.AddHook(pipelines)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			get := redis.NewStringCmd(ctx, "get", "k"+strconv.Itoa(i))
			if err := c.Do(ctx, get); err != nil || get.Val() != strconv.Itoa(i) {
				t.Errorf("get k%d: %q %v", i, get.Val(), err)
			}
		}()
	}
	wg.Wait()
	missing := redis.NewStringCmd(ctx, "get", "nothing")
	if err := c.Do(ctx, missing); !errors.Is(err, redis.Nil) {
		t.Errorf("a missing key: %v", err)
	}
	if n := pipelines.n.Load(); n < 1 || n >= 200 {
		t.Errorf("200 commands sent at once went in %d round trips", n)
	}
}

// TestHungRedisFailsWithinTheTimeout: a command to a hung Redis fails within the
// client's timeouts, and one whose context ends returns then.
func TestHungRedisFailsWithinTheTimeout(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	srv.Pause()
	defer srv.Resume()
	begun := time.Now()
	if err := c.Do(context.Background(), redis.NewStringCmd(context.Background(), "get", "k")); err == nil {
		t.Error("a hung Redis answered")
	}
	if took := time.Since(begun); took > 2*time.Second {
		t.Errorf("took %v", took)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := c.Do(ctx, redis.NewStringCmd(ctx, "get", "k")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("context ended: %v", err)
	}
}

// countPipelines counts the pipelines sent.
type countPipelines struct{ n atomic.Int64 }

func (h *countPipelines) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *countPipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *countPipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmds)
	}
}

// TestSentCommandsReportOnceSent: a command nobody waits for is sent in the next
// pipeline and reports its outcome; a closed client takes none.
func TestSentCommandsReportOnceSent(t *testing.T) {
	srv := redistest.Start(t)
	c := srv.Client()
	outcome := make(chan error, 1)
	if !c.Send(redis.NewStatusCmd(context.Background(), "set", "k", "v"), func(err error) { outcome <- err }) {
		t.Fatal("not taken")
	}
	if err := <-outcome; err != nil {
		t.Fatalf("sent: %v", err)
	}
	if v, err := c.Redis.Get(context.Background(), "k").Result(); err != nil || v != "v" {
		t.Errorf("k = %q %v", v, err)
	}
	c.Close()
	if c.Send(redis.NewStatusCmd(context.Background(), "set", "k", "w"), nil) {
		t.Error("a closed client took a command")
	}
}
