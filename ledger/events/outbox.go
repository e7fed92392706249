package events

import (
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/document"
)

// readNext is the relay's one statement per round (migration 013): it records the batch
// Kafka acknowledged and returns the next, as outboxLines.
const readNext = `SELECT sequence, type, subject, occurred_at, accounts, data::text, created_at, metadata::text,
	reverses, posting, account, amount, asset, scale FROM tally.outbox_next($1, $2)`

// outboxRow is one event, ready to be published: the accounts it concerns, and its data.
type outboxRow struct {
	Sequence   int64
	Type       string
	Subject    uuid.UUID
	OccurredAt time.Time
	Accounts   []uuid.UUID
	Data       []byte
}

// outboxLine is one row of outbox_next: an event, or one entry of a transaction's (the
// fields from CreatedAt on are a transaction's; Data is PostgreSQL's text of the jsonb,
// the same bytes every time).
type outboxLine struct {
	outboxRow
	CreatedAt *time.Time
	Metadata  []byte
	Reverses  *uuid.UUID
	Posting   *int16
	Account   *uuid.UUID
	Amount    *int64
	Asset     *string
	Scale     *int16
}

// assemble turns outbox_next's lines into events: a transaction's entries (one line each,
// by posting, debit legs first) into its postings. A posting is one credit leg and one
// debit leg per balance slot drawn from.
func assemble(lines []outboxLine) ([]outboxRow, error) {
	var out []outboxRow
	for i := 0; i < len(lines); {
		line := lines[i]
		j := i + 1
		for j < len(lines) && lines[j].Sequence == line.Sequence {
			j++
		}
		if line.Type != "transaction.committed" {
			if j-i != 1 || line.Data == nil {
				return nil, fmt.Errorf("events: event %d (%s %s) has no data", line.Sequence, line.Type, line.Subject)
			}
			out = append(out, line.outboxRow)
			i = j
			continue
		}
		row, err := transactionEvent(lines[i:j])
		if err != nil {
			return nil, err
		}
		out = append(out, row)
		i = j
	}
	return out, nil
}

// transactionEvent is a transaction's event, its data the transaction as the API shows
// it, so a consumer needs no call back.
func transactionEvent(entries []outboxLine) (outboxRow, error) {
	first := entries[0]
	fail := func(format string, args ...any) (outboxRow, error) {
		return outboxRow{}, fmt.Errorf("events: event %d (transaction %s): %s", first.Sequence, first.Subject, fmt.Sprintf(format, args...))
	}
	if first.CreatedAt == nil || first.Posting == nil {
		return fail("the transaction or its entries are not in the journal")
	}
	tx := ledger.Transaction{ID: ledger.TransactionID(first.Subject), Metadata: first.Metadata, CreatedAt: *first.CreatedAt}
	if first.Reverses != nil {
		tx.Reverses = ledger.TransactionID(*first.Reverses)
	}
	scales := map[string]int{}
	row := first.outboxRow
	seen := make(map[uuid.UUID]bool, 4)
	for k := 0; k < len(entries); {
		n := *entries[k].Posting
		var p ledger.Posting
		var from, to bool
		for ; k < len(entries) && *entries[k].Posting == n; k++ {
			e := entries[k]
			switch {
			case *e.Amount < 0:
				p.From, from = ledger.AccountID(*e.Account), true
			case to:
				return fail("posting %d has two credit legs", n)
			default:
				p.To, p.Amount, p.Asset, to = ledger.AccountID(*e.Account), *e.Amount, *e.Asset, true
				scales[*e.Asset] = int(*e.Scale)
			}
			if !seen[*e.Account] {
				seen[*e.Account] = true
				row.Accounts = append(row.Accounts, *e.Account)
			}
		}
		if !from || !to {
			return fail("posting %d lacks a debit or a credit leg", n)
		}
		tx.Postings = append(tx.Postings, p)
	}
	doc, err := document.TransactionOf(tx, func(asset string) (int, error) { return scales[asset], nil })
	if err != nil {
		return fail("%v", err)
	}
	data, err := document.Marshal(doc)
	if err != nil {
		return fail("%v", err)
	}
	row.Data = data
	return row, nil
}
