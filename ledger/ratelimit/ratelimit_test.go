package ratelimit_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/internal/redistest"
	"github.com/tallyhq/tally/ledger/ratelimit"
)

func TestParseLimit(t *testing.T) {
	for in, want := range map[string]ratelimit.Limit{
		"600/m": {Rate: 600, Period: time.Minute, Burst: 600}, "100/s:200": {Rate: 100, Period: time.Second, Burst: 200},
		"1/h": {Rate: 1, Period: time.Hour, Burst: 1},
	} {
		got, err := ratelimit.ParseLimit(in)
		if err != nil || got != want {
			t.Errorf("%s: %+v %v", in, got, err)
		}
		if again, err := ratelimit.ParseLimit(got.String()); err != nil || again != got {
			t.Errorf("%s written as %s reads back as %+v %v", in, got, again, err)
		}
	}
	for _, bad := range []string{"", "10", "10/d", "0/s", "-1/s", "x/s", "10/s:0", "10/s:x", "10/m:"} {
		if _, err := ratelimit.ParseLimit(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// count sends n requests of the caller through the limiters in turn and counts those
// allowed.
func count(ls []*ratelimit.Limiter, caller string, class ratelimit.Class, n int) int {
	allowed := 0
	for i := range n {
		if ls[i%len(ls)].Allow(context.Background(), caller, class).Allowed {
			allowed++
		}
	}
	return allowed
}

// TestAllowanceIsSharedByReplicas: two replicas on one Redis grant a caller exactly
// its burst between them, per class and per caller, and say when to come back.
func TestAllowanceIsSharedByReplicas(t *testing.T) {
	srv := redistest.Start(t)
	limits := map[ratelimit.Class]ratelimit.Limit{ratelimit.Writes: {Rate: 10, Period: time.Hour, Burst: 10}}
	a := ratelimit.New(ratelimit.Config{Limits: limits, Redis: srv.Client()})
	b := ratelimit.New(ratelimit.Config{Limits: limits, Redis: srv.Client()})
	if got := count([]*ratelimit.Limiter{a, b}, "shop", ratelimit.Writes, 30); got != 10 {
		t.Errorf("two replicas allowed %d writes, want 10", got)
	}
	d := b.Allow(context.Background(), "shop", ratelimit.Writes)
	if d.Allowed || d.RetryAfter <= 0 || d.Remaining != 0 {
		t.Errorf("over the limit: %+v", d)
	}
	if got := count([]*ratelimit.Limiter{a, b}, "bank", ratelimit.Writes, 12); got != 10 {
		t.Errorf("another caller got %d, want its own 10", got)
	}
	if got := count([]*ratelimit.Limiter{a, b}, "shop", ratelimit.Reads, 50); got != 50 {
		t.Errorf("an unlimited class allowed %d of 50", got)
	}
}

// TestRedisDownFallsBackToMemory: with Redis killed, or hung, every request still gets
// an answer, from each replica's own allowance, and is counted as such; once Redis is
// back and the cooldown over, the shared allowance rules again.
func TestRedisDownFallsBackToMemory(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	limits := map[ratelimit.Class]ratelimit.Limit{ratelimit.Writes: {Rate: 5, Period: time.Hour, Burst: 5}}
	l := ratelimit.New(ratelimit.Config{Limits: limits, Redis: srv.Client(), Registerer: reg})
	if err := l.Warm(context.Background()); err != nil {
		t.Fatalf("warm with Redis up: %v", err)
	}
	srv.Kill()
	if err := l.Warm(context.Background()); err == nil {
		t.Error("warm with Redis down said nothing")
	}
	if got := count([]*ratelimit.Limiter{l}, "shop", ratelimit.Writes, 8); got != 5 {
		t.Errorf("Redis down: allowed %d, want this replica's 5", got)
	}
	memory := func() float64 { return decisionsFrom(t, reg, "memory") }
	if memory() != 8 {
		t.Errorf("decisions from memory: %v, want 8", memory())
	}
	srv.Restart()
	time.Sleep(300 * time.Millisecond) // past the cooldown
	if got := count([]*ratelimit.Limiter{l}, "bank", ratelimit.Writes, 7); got != 5 {
		t.Errorf("Redis back: allowed %d, want 5", got)
	}
	if memory() != 8 {
		t.Errorf("Redis back, yet %v decisions from memory", memory()-8)
	}
	srv.Pause()
	defer srv.Resume()
	if d := l.Allow(context.Background(), "clinic", ratelimit.Writes); !d.Allowed || memory() != 9 {
		t.Errorf("Redis hung: %+v, %v from memory", d, memory())
	}
}

// decisionsFrom counts the decisions taken by the source (redis or memory).
func decisionsFrom(t *testing.T, reg *prometheus.Registry, source string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := 0.0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "source" && lp.GetValue() == source {
					total += m.GetCounter().GetValue()
				}
			}
		}
	}
	return total
}

// TestFarFromTheLimitReplicasAdmitOnTheirOwn: with a burst of 6,400 (a 64th: 100), two
// replicas admit most requests without a call to Redis, yet together grant no less
// than the allowance and at most a 64th of it each beyond; near the limit every
// request asks Redis.
func TestFarFromTheLimitReplicasAdmitOnTheirOwn(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	limits := map[ratelimit.Class]ratelimit.Limit{ratelimit.Reads: {Rate: 6400, Period: time.Hour, Burst: 6400}}
	a := ratelimit.New(ratelimit.Config{Limits: limits, Redis: srv.Client(), Registerer: reg})
	b := ratelimit.New(ratelimit.Config{Limits: limits, Redis: srv.Client()})
	replicas := []*ratelimit.Limiter{a, b}
	got := count(replicas, "shop", ratelimit.Reads, 6000)
	if redis := decisionsFrom(t, reg, "redis"); got != 6000 || redis > 100 {
		t.Errorf("far from the limit: %d of 6000 allowed, replica a asked Redis %v times of 3000", got, redis)
	}
	got += count(replicas, "shop", ratelimit.Reads, 4000)
	if got < 6400 || got > 6400+2*100+5 { // and what an hour's rate refills meanwhile
		t.Errorf("two replicas allowed %d reads, want 6400 to 6605", got)
	}
	if d := a.Allow(context.Background(), "shop", ratelimit.Reads); d.Allowed || d.RetryAfter <= 0 {
		t.Errorf("over the limit: %+v", d)
	}
}
