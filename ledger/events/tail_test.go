package events_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/ledger/events"
)

// TestTailPrintsEachEventOnce: what the relay published, redelivered in part, is printed
// once per event and account, in order; --all prints the redeliveries too; --to-end stops
// at the end, not after a quiet spell a busy machine can mistake it for.
func TestTailPrintsEachEventOnce(t *testing.T) {
	f := newFixture(t)
	// nothing published yet: --to-end has nothing to wait for
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if n, err := events.Tail(ctx, events.Kafka{Brokers: f.addrs}, events.TailOptions{Topic: topic, ToEnd: true}, io.Discard); err != nil || n != 0 || ctx.Err() != nil {
		t.Fatalf("tail --to-end of an empty topic: %d printed, %v, waited %v", n, err, ctx.Err())
	}
	a, b := f.account("a"), f.account("b")
	f.post(f.store, "fund", usd(f.external, a, 10_00))
	f.post(f.store, "pay", usd(a, b, 1_00))
	stop := f.relay("one", prometheus.NewRegistry())
	_, all := f.committed()
	got := f.consume(time.Minute, haveSequences(all))
	stop()
	// a relay that died before recording its last batch sends it again: here, by hand
	producer, err := events.NewProducer(events.Kafka{Brokers: f.addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	raw := f.consumeRaw(len(got))
	if err := producer.ProduceSync(context.Background(), raw[len(raw)-2:]...).FirstErr(); err != nil {
		t.Fatal(err)
	}
	tail := func(o events.TailOptions) []events.Event {
		var out bytes.Buffer
		o.Topic, o.ToEnd = topic, true
		if _, err := events.Tail(context.Background(), events.Kafka{Brokers: f.addrs}, o, &out); err != nil {
			t.Fatal(err)
		}
		var evs []events.Event
		dec := json.NewDecoder(&out)
		for dec.More() {
			var e events.Event
			if err := dec.Decode(&e); err != nil {
				t.Fatal(err)
			}
			evs = append(evs, e)
		}
		return evs
	}
	if once := tail(events.TailOptions{}); len(once) != len(got) {
		t.Errorf("tail printed %d records, %d were published once", len(once), len(got))
	}
	if twice := tail(events.TailOptions{All: true}); len(twice) != len(got)+2 {
		t.Errorf("tail --all printed %d records, want %d", len(twice), len(got)+2)
	}
}
