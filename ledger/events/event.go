// Package events publishes what the ledger did to Kafka: the relay reads a shard's
// outbox (rows its transactions wrote with the money, migration 012) in commit order and
// produces one record per event and account, at least once, with stable ids.
package events

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
)

// SchemaVersion is the version of the event document below; a change a consumer could
// trip on gets a new one.
const SchemaVersion = 1

// Event is one change on one shard, as a consumer receives it (the record's value).
type Event struct {
	Version int `json:"version"`
	// ID is stable across redeliveries: derived from the shard database's identity and
	// the sequence. The copies of one event (one per account) share it.
	ID       uuid.UUID `json:"id"`
	Type     string    `json:"type"` // transaction.committed, account.opened, transfer.posted...
	Shard    int       `json:"shard"`
	Sequence int64     `json:"sequence"` // per shard, from 1, without gaps, in commit order
	// Account is the account this copy is for, and the record's key: an event that
	// concerns several accounts (a transaction's postings) is published once for each.
	Account uuid.UUID       `json:"account"`
	Time    time.Time       `json:"time"`
	Data    json.RawMessage `json:"data"`
}

// outboxRow is an event as the outbox hands it to the relay.
type outboxRow struct {
	Sequence   int64
	Type       string
	Subject    uuid.UUID
	OccurredAt time.Time
	Accounts   []uuid.UUID
	Data       json.RawMessage
}

// eventID derives an event's id from its shard database's identity and its sequence.
func eventID(ledger uuid.UUID, sequence int64) uuid.UUID {
	return uuid.NewSHA1(ledger, []byte(strconv.FormatInt(sequence, 10)))
}

// records renders an outbox row as Kafka records: one per distinct account, keyed by
// it, with the CloudEvents attributes as headers (binary content mode).
func records(topic string, shard int, ledger uuid.UUID, row outboxRow) ([]*kgo.Record, error) {
	ev := Event{Version: SchemaVersion, ID: eventID(ledger, row.Sequence), Type: row.Type,
		Shard: shard, Sequence: row.Sequence, Time: row.OccurredAt.UTC(), Data: row.Data}
	seen := make(map[uuid.UUID]bool, len(row.Accounts))
	out := make([]*kgo.Record, 0, len(row.Accounts))
	for _, account := range row.Accounts {
		if seen[account] {
			continue
		}
		seen[account] = true
		ev.Account = account
		value, err := json.Marshal(ev)
		if err != nil {
			return nil, fmt.Errorf("events: render event %d: %w", row.Sequence, err)
		}
		key := account.String()
		out = append(out, &kgo.Record{Topic: topic, Key: []byte(key), Value: value, Headers: []kgo.RecordHeader{
			{Key: "ce_specversion", Value: []byte("1.0")},
			// one id per record: a consumer deduplicating on (source, id) keeps each
			// account's copy
			{Key: "ce_id", Value: []byte(ev.ID.String() + "/" + key)},
			{Key: "ce_source", Value: []byte("urn:uuid:" + ledger.String())},
			{Key: "ce_type", Value: []byte("dev.tally." + row.Type)},
			{Key: "ce_subject", Value: []byte(key)},
			{Key: "ce_time", Value: []byte(ev.Time.Format(time.RFC3339Nano))},
			{Key: "content-type", Value: []byte("application/json")},
		}})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("events: event %d (%s %s) concerns no account", row.Sequence, row.Type, row.Subject)
	}
	return out, nil
}
