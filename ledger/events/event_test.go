package events

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"
)

// The record's value, written by hand, is the Event document encoding/json reads.
func TestRecordsAreEvents(t *testing.T) {
	ledger, a, b := uuid.New(), uuid.New(), uuid.New()
	row := outboxRow{Sequence: 42, Type: "transaction.committed", Subject: uuid.New(),
		OccurredAt: time.Date(2026, 12, 3, 12, 0, 0, 123456000, time.FixedZone("x", 3600)),
		Accounts:   []uuid.UUID{a, b, a}, Data: []byte(`{"id": "x", "metadata": {"note": "a \"quoted\" word"}}`)}
	recs, err := records("t", 3, ledger, row)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("%d records for two accounts", len(recs))
	}
	for i, account := range []uuid.UUID{a, b} {
		var e Event
		if err := json.Unmarshal(recs[i].Value, &e); err != nil {
			t.Fatalf("%s: %v", recs[i].Value, err)
		}
		want := Event{Version: SchemaVersion, ID: eventID(ledger, 42), Type: row.Type, Shard: 3, Sequence: 42, Account: account,
			Time: row.OccurredAt.UTC(), Data: json.RawMessage(row.Data)}
		if e.ID != want.ID || e.Type != want.Type || e.Shard != 3 || e.Sequence != 42 || e.Account != account ||
			!e.Time.Equal(want.Time) || string(e.Data) != string(row.Data) || string(recs[i].Key) != account.String() {
			t.Errorf("record %d: %+v, want %+v", i, e, want)
		}
	}
}
