package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TailOptions say what Tail prints and when it stops.
type TailOptions struct {
	Topic string
	// Idle: stop once no record came for this long (0: follow until ctx ends).
	Idle time.Duration
	// ToEnd: stop once every partition is read up to where it ended when Tail began,
	// however slowly the records arrive.
	ToEnd bool
	// Count: stop after printing this many events (0: no limit).
	Count int
	// All prints redeliveries too; by default a record whose sequence is not above the
	// last one printed for its shard and account is skipped, which is the consumer's
	// whole deduplication rule.
	All bool
}

// Tail prints the topic's events from its start, one JSON document per line, and returns
// how many it printed.
func Tail(ctx context.Context, k Kafka, o TailOptions, out io.Writer) (int, error) {
	opts, err := k.Options()
	if err != nil {
		return 0, err
	}
	c, err := kgo.NewClient(append(opts, kgo.ConsumeTopics(o.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))...)
	if err != nil {
		return 0, fmt.Errorf("events: kafka client: %w", err)
	}
	defer c.Close()
	var behind map[int32]int64 // partition -> the offset it ended at, while not yet reached
	if o.ToEnd {
		if behind, err = endOffsets(ctx, c, o.Topic); err != nil {
			return 0, err
		}
		if len(behind) == 0 {
			return 0, nil // nothing to read
		}
	}
	type stream struct {
		ledger  string
		account uuid.UUID
	}
	last := map[stream]int64{}
	printed := 0
	for {
		pollCtx, cancel := ctx, context.CancelFunc(func() {})
		if o.Idle > 0 {
			pollCtx, cancel = context.WithTimeout(ctx, o.Idle)
		}
		fetches := c.PollFetches(pollCtx)
		idle := pollCtx.Err() != nil && ctx.Err() == nil
		cancel()
		if ctx.Err() != nil {
			return printed, nil
		}
		for _, e := range fetches.Errors() {
			if !errors.Is(e.Err, context.DeadlineExceeded) && !errors.Is(e.Err, context.Canceled) {
				return printed, fmt.Errorf("events: read %s: %w", o.Topic, e.Err)
			}
		}
		n := 0
		var failed error
		fetches.EachRecord(func(r *kgo.Record) {
			n++
			if end, ok := behind[r.Partition]; ok && r.Offset+1 >= end {
				delete(behind, r.Partition)
			}
			if failed != nil || (o.Count > 0 && printed >= o.Count) {
				return
			}
			var ev Event
			if err := json.Unmarshal(r.Value, &ev); err != nil {
				failed = fmt.Errorf("events: record at %s/%d/%d is not an event: %w", r.Topic, r.Partition, r.Offset, err)
				return
			}
			s := stream{ledger: header(r, "ce_source"), account: ev.Account}
			if !o.All && ev.Sequence <= last[s] {
				return // a redelivery
			}
			last[s] = ev.Sequence
			if _, err := fmt.Fprintf(out, "%s\n", r.Value); err != nil {
				failed = err
				return
			}
			printed++
		})
		if failed != nil {
			return printed, failed
		}
		if (o.Count > 0 && printed >= o.Count) || (idle && n == 0) || (o.ToEnd && len(behind) == 0) {
			return printed, nil
		}
	}
}

// endOffsets says, for each partition of topic that holds records, the offset after its
// last one.
func endOffsets(ctx context.Context, c *kgo.Client, topic string) (map[int32]int64, error) {
	adm := kadm.NewClient(c)
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("events: where %s starts: %w", topic, err)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("events: where %s ends: %w", topic, err)
	}
	behind := map[int32]int64{}
	ends.Each(func(e kadm.ListedOffset) {
		if s, ok := starts.Lookup(topic, e.Partition); ok && e.Offset > s.Offset {
			behind[e.Partition] = e.Offset
		}
	})
	return behind, nil
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
