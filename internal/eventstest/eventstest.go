// Package eventstest reads a topic of Tally events the way a consumer does, for tests:
// everything from the start, checked to be whole.
package eventstest

import (
	"context"
	"encoding/json"
	"sort"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tallyhq/tally/ledger/events"
)

// Received is one record as a consumer reads it.
type Received struct {
	events.Event
	Partition int32
	Headers   map[string]string
}

// Consume reads the topic from the start until done says it has all it waits for, and
// fails the test if that takes longer than within.
func Consume(t testing.TB, brokers []string, topic string, within time.Duration, done func([]Received) bool) []Received {
	t.Helper()
	c, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	var got []Received
	for !done(got) {
		fetches := c.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("after %s the topic holds %d records, and not all that was expected", within, len(got))
		}
		fetches.EachRecord(func(r *kgo.Record) {
			var ev events.Event
			if err := json.Unmarshal(r.Value, &ev); err != nil {
				t.Fatalf("record %q: %v", r.Value, err)
			}
			if string(r.Key) != ev.Account.String() {
				t.Errorf("record of event %d keyed %q, for account %s", ev.Sequence, r.Key, ev.Account)
			}
			h := map[string]string{}
			for _, kv := range r.Headers {
				h[kv.Key] = string(kv.Value)
			}
			got = append(got, Received{Event: ev, Partition: r.Partition, Headers: h})
		})
	}
	return got
}

// HaveSequences is a Consume condition: at least n distinct events.
func HaveSequences(n int) func([]Received) bool {
	return func(got []Received) bool {
		seen := map[int64]bool{}
		for _, r := range got {
			seen[r.Sequence] = true
		}
		return len(seen) >= n
	}
}

// Distinct is the events received, one per sequence (Account zeroed), checked to be the
// same event in every copy and redelivery, and numbered 1..n without gaps.
func Distinct(t testing.TB, got []Received) []events.Event {
	t.Helper()
	bySeq := map[int64]events.Event{}
	for _, r := range got {
		first, ok := bySeq[r.Sequence]
		if !ok {
			e := r.Event
			e.Account = uuid.UUID{}
			bySeq[r.Sequence] = e
			continue
		}
		if first.ID != r.ID || first.Type != r.Type || string(first.Data) != string(r.Data) {
			t.Errorf("event %d received as %s %s and as %s %s", r.Sequence, first.ID, first.Type, r.ID, r.Type)
		}
	}
	out := make([]events.Event, 0, len(bySeq))
	for _, e := range bySeq {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Sequence < out[j].Sequence })
	for i, e := range out {
		if e.Sequence != int64(i)+1 {
			t.Fatalf("sequence %d received where %d was due: a gap", e.Sequence, i+1)
		}
	}
	return out
}

// TransactionIDs are the ids of the transaction.committed events among evs.
func TransactionIDs(t testing.TB, evs []events.Event) map[string]bool {
	t.Helper()
	ids := map[string]bool{}
	for _, e := range evs {
		if e.Type != "transaction.committed" {
			continue
		}
		var data struct{ ID string }
		if err := json.Unmarshal(e.Data, &data); err != nil {
			t.Fatalf("event %d: %v", e.Sequence, err)
		}
		ids[data.ID] = true
	}
	return ids
}
