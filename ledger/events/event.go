// Package events publishes what the ledger did to Kafka: the relay reads a shard's
// outbox (rows its transactions wrote with the money, migration 012) in each account's
// commit order and produces one record per event and account, at least once, with
// stable ids.
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
	ID    uuid.UUID `json:"id"`
	Type  string    `json:"type"` // transaction.committed, account.opened, transfer.posted...
	Shard int       `json:"shard"`
	// Sequence numbers a shard's events from 1 without gaps; any two events of one
	// account are numbered in the order they committed.
	Sequence int64 `json:"sequence"`
	// Account is the account this copy is for, and the record's key: an event that
	// concerns several accounts (a transaction's postings) is published once for each.
	Account uuid.UUID `json:"account"`
	// Time is when the database transaction that wrote the event began (an account's
	// opening: when it was opened).
	Time time.Time       `json:"time"`
	Data json.RawMessage `json:"data"` // the subject as of the change

}

// eventID derives an event's id from its shard database's identity and its sequence.
func eventID(ledger uuid.UUID, sequence int64) uuid.UUID {
	return uuid.NewSHA1(ledger, []byte(strconv.FormatInt(sequence, 10)))
}

// records renders an outbox row as Kafka records: one per distinct account, keyed by
// it, with the CloudEvents attributes as headers (binary content mode). The value is an
// Event written by hand, field by field: every field but Data is a number, a uuid, a
// time or a type from the outbox's CHECK, none needing escapes, and Data is valid JSON
// (jsonb's text, or encoding/json's); encoding/json would re-read each copy's data to
// compact it, which cost a relay more than all else.
func records(topic string, shard int, ledger uuid.UUID, row outboxRow) ([]*kgo.Record, error) {
	id := eventID(ledger, row.Sequence).String()
	when := row.OccurredAt.UTC().Format(time.RFC3339Nano)
	head := fmt.Appendf(nil, `{"version":%d,"id":"%s","type":"%s","shard":%d,"sequence":%d,"account":"`,
		SchemaVersion, id, row.Type, shard, row.Sequence)
	tail := fmt.Appendf(nil, `","time":"%s","data":`, when)
	seen := make(map[uuid.UUID]bool, len(row.Accounts))
	out := make([]*kgo.Record, 0, len(row.Accounts))
	for _, account := range row.Accounts {
		if seen[account] {
			continue
		}
		seen[account] = true
		key := account.String()
		value := make([]byte, 0, len(head)+len(key)+len(tail)+len(row.Data)+1)
		value = append(append(append(append(append(value, head...), key...), tail...), row.Data...), '}')
		out = append(out, &kgo.Record{Topic: topic, Key: []byte(key), Value: value, Headers: []kgo.RecordHeader{
			{Key: "ce_specversion", Value: []byte("1.0")},
			// one id per record: a consumer deduplicating on (source, id) keeps each
			// account's copy
			{Key: "ce_id", Value: []byte(id + "/" + key)},
			{Key: "ce_source", Value: []byte("urn:uuid:" + ledger.String())},
			{Key: "ce_type", Value: []byte("dev.tally." + row.Type)},
			{Key: "ce_subject", Value: []byte(key)},
			{Key: "ce_time", Value: []byte(when)},
			{Key: "content-type", Value: []byte("application/json")},
		}})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("events: event %d (%s %s) concerns no account", row.Sequence, row.Type, row.Subject)
	}
	return out, nil
}
