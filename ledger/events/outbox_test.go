package events

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

// A transaction's entries become its postings as the API shows them (one rendering, package document): a debit drawn from
// two balance slots is one posting, amounts are in the asset's units, metadata is
// canonical, and each account is named once.
func TestAssembleRendersTransactionsAsTheAPIDoes(t *testing.T) {
	tx, original, hot, a, b := uuid.New(), uuid.New(), uuid.New(), uuid.New(), uuid.New()
	created := time.Date(2026, 12, 3, 12, 30, 6, 900104000, time.FixedZone("x", 3600))
	entry := func(posting int16, account uuid.UUID, amount int64, asset string, scale int16) outboxLine {
		return outboxLine{outboxRow: outboxRow{Sequence: 7, Type: "transaction.committed", Subject: tx, OccurredAt: created},
			CreatedAt: &created, Metadata: []byte(`{"z": 1, "a": "rent <&>"}`), Reverses: &original,
			Posting: &posting, Account: &account, Amount: &amount, Asset: &asset, Scale: &scale}
	}
	account := outboxLine{outboxRow: outboxRow{Sequence: 8, Type: "account.frozen", Subject: a, OccurredAt: created,
		Accounts: []uuid.UUID{a}, Data: []byte(`{"id": "x"}`)}}
	got, err := assemble([]outboxLine{
		entry(0, hot, -3_00, "USD", 2), entry(0, hot, -2_05, "USD", 2), entry(0, a, 5_05, "USD", 2),
		entry(1, a, -7, "JPY", 0), entry(1, b, 7, "JPY", 0),
		account,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("%d events from a transaction and an account's freeze", len(got))
	}
	want := `{"id":"` + tx.String() + `","postings":[` +
		`{"from_account":"` + hot.String() + `","to_account":"` + a.String() + `","amount":"5.05","asset":"USD"},` +
		`{"from_account":"` + a.String() + `","to_account":"` + b.String() + `","amount":"7","asset":"JPY"}],` +
		`"reverses":"` + original.String() + `","metadata":{"a":"rent <&>","z":1},"created_at":"2026-12-03T11:30:06.900104Z"}`
	if string(got[0].Data) != want {
		t.Errorf("data\n %s\nwant\n %s", got[0].Data, want)
	}
	if accounts := got[0].Accounts; len(accounts) != 3 || accounts[0] != hot || accounts[1] != a || accounts[2] != b {
		t.Errorf("accounts %v, want %v", accounts, []uuid.UUID{hot, a, b})
	}
	if got[1].Sequence != 8 || string(got[1].Data) != `{"id": "x"}` {
		t.Errorf("the account's event: %+v", got[1])
	}

	for name, lines := range map[string][]outboxLine{
		"lacks a debit": {entry(0, a, 5, "USD", 2)},
		"two credit":    {entry(0, hot, -5, "USD", 2), entry(0, a, 5, "USD", 2), entry(0, b, 5, "USD", 2)},
		"not in the":    {{outboxRow: outboxRow{Sequence: 7, Type: "transaction.committed", Subject: tx}}},
		"has no data":   {{outboxRow: outboxRow{Sequence: 8, Type: "account.frozen", Subject: a}}},
		"metadata":      {func() outboxLine { l := entry(0, hot, -5, "USD", 2); l.Metadata = []byte(`[1]`); return l }(), entry(0, a, 5, "USD", 2)},
	} {
		if _, err := assemble(lines); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: %v", name, err)
		}
	}
}
