package events_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/events"
)

// load posts small transfers from a funded account one after another until stopped,
// and returns how many it posted.
func (f *fixture) load() (stop func() int) {
	f.t.Helper()
	a, b := f.account("load-a"), f.account("load-b")
	f.post(f.store, "load-fund", usd(f.external, a, 1_000_000_00))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int)
	go func() {
		n := 0
		for ctx.Err() == nil {
			if f.post(f.store, fmt.Sprint("load-", n), usd(a, b, 1)) != (ledger.TransactionID{}) {
				n++
			}
			time.Sleep(2 * time.Millisecond)
		}
		done <- n
	}()
	return func() int { cancel(); return <-done }
}

func (f *fixture) checkAllDelivered(within time.Duration) {
	f.t.Helper()
	_, all := f.committed()
	got := f.consume(within, haveSequences(all))
	evs := distinct(f.t, got)
	if len(evs) != all {
		f.t.Fatalf("%d events received, %d committed", len(evs), all)
	}
	f.t.Logf("%d events in %d records", len(evs), len(got))
}

// TestRelayKilledMidBatch kills -9 a relay process while Kafka handles its produce
// request: the events it sent but did not record as published are published again by
// the next relay, with the same ids and sequences; none is lost.
func TestRelayKilledMidBatch(t *testing.T) {
	f := newFixture(t)
	var produces atomic.Int32
	midBatch := make(chan struct{})
	f.kafka.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		f.kafka.KeepControl()
		if produces.Add(1) == 5 {
			close(midBatch)
		}
		return nil, nil, false // Kafka handles it: the records land
	})
	stopLoad := f.load()
	first := startChild(t, f, "first")
	select {
	case <-midBatch:
	case <-time.After(2 * time.Minute):
		t.Fatal("no produce request reached Kafka")
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	startChild(t, f, "second")
	time.Sleep(500 * time.Millisecond)
	t.Logf("%d transfers posted", stopLoad())
	f.checkAllDelivered(2 * time.Minute)
}

// TestStoppedRelayLosesItsTurn starts two relays for one shard: one publishes, the other
// stands by. The publishing one is stopped (SIGSTOP, its connections left open): the
// standby takes over once PostgreSQL ends the silent session, and the stopped one, let
// go again, finds it lost its turn. Every event arrives, duplicates only with the same
// id and sequence.
func TestStoppedRelayLosesItsTurn(t *testing.T) {
	f := newFixture(t)
	stopLoad := f.load()
	one, two := startChild(t, f, "one"), startChild(t, f, "two")
	eventually(t, 2*time.Minute, "a relay to take the turn", func() bool { return one.hasTurn() || two.hasTurn() })
	time.Sleep(time.Second)
	active, standby := one, two
	if two.hasTurn() {
		active, standby = two, one
	}
	if standby.hasTurn() {
		t.Fatal("both relays have the turn")
	}
	if err := active.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	eventually(t, 2*time.Minute, "the standby to take the turn", standby.hasTurn)
	t.Logf("the standby took the turn %s after the active relay stopped", time.Since(stopped).Round(time.Millisecond))
	if err := active.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	t.Logf("%d transfers posted", stopLoad())
	f.checkAllDelivered(2 * time.Minute)
}

// TestAFailingRelayGivesUpItsTurn: a relay that takes the turn and then cannot publish
// (here: pointed at the wrong shard) lets it go, so a sound one publishes.
func TestAFailingRelayGivesUpItsTurn(t *testing.T) {
	f := newFixture(t)
	a, b := f.account("a"), f.account("b")
	f.post(f.store, "fund", usd(f.external, a, 10_00))
	f.post(f.store, "pay", usd(a, b, 1_00))
	producer, err := events.NewProducer(events.Kafka{Brokers: f.addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = events.Run(ctx, events.Config{Shard: 1, DSN: f.db.RelayDSN(), Client: producer, Topic: topic, Log: testLog(t, "wrong")})
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(time.Second) // it has the turn, and fails
	f.relay("sound", prometheus.NewRegistry())
	f.checkAllDelivered(time.Minute)
}

// TestAStoppedRelayLeavesNothingToRepeat: a relay stopped on purpose (a rolling update)
// records what Kafka acknowledged, so the next one sends nothing twice. (A batch whose
// acknowledgement had not reached the relay when it stopped is sent again, as at least
// once allows: the test stops it once the acknowledgement arrived, which a consumer
// seeing the records does not prove.)
func TestAStoppedRelayLeavesNothingToRepeat(t *testing.T) {
	f := newFixture(t)
	a, b := f.account("a"), f.account("b")
	f.post(f.store, "fund", usd(f.external, a, 10_00))
	reg := prometheus.NewRegistry()
	stop := f.relay("first", reg)
	_, all := f.committed()
	f.consume(time.Minute, haveSequences(all))
	eventually(t, time.Minute, "the relay to have Kafka's acknowledgement", func() bool {
		return metric(t, reg, "tally_events_published_total") == float64(all)
	})
	stop()
	f.relay("second", prometheus.NewRegistry())
	f.post(f.store, "pay", usd(a, b, 1_00))
	_, all = f.committed()
	got := f.consume(time.Minute, haveSequences(all))
	seen := map[string]bool{}
	for _, r := range got {
		k := fmt.Sprint(r.Sequence, r.Account)
		if seen[k] {
			t.Errorf("event %d for %s published twice", r.Sequence, r.Account)
		}
		seen[k] = true
	}
}
