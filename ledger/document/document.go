// Package document writes the ledger's JSON documents that more than one part shows: a
// transaction as the HTTP API answers with it and its event carries it, the same bytes
// from both.
package document

import (
	"bytes"
	"encoding/json"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/metadata"
	"github.com/tallyhq/tally/ledger/money"
)

// Marshal is encoding/json without HTML escaping (metadata keeps its "<" and "&") and
// without the trailing newline.
func Marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

type posting struct {
	FromAccount ledger.AccountID `json:"from_account"`
	ToAccount   ledger.AccountID `json:"to_account"`
	Amount      string           `json:"amount"`
	Asset       string           `json:"asset"`
}

type transaction struct {
	ID        ledger.TransactionID  `json:"id"`
	Postings  []posting             `json:"postings"`
	Reverses  *ledger.TransactionID `json:"reverses,omitempty"`
	Metadata  json.RawMessage       `json:"metadata"`
	CreatedAt time.Time             `json:"created_at"`
}

// Transaction writes tx with each posting's amount in its asset's units (scale says an
// asset's scale), its metadata canonical and its time in UTC.
func Transaction(tx ledger.Transaction, scale func(asset string) (int, error)) ([]byte, error) {
	meta, err := metadata.Canonical(tx.Metadata)
	if err != nil {
		return nil, err
	}
	v := transaction{ID: tx.ID, Metadata: meta, CreatedAt: tx.CreatedAt.UTC(), Postings: make([]posting, 0, len(tx.Postings))}
	if tx.Reverses != (ledger.TransactionID{}) {
		v.Reverses = &tx.Reverses
	}
	for _, p := range tx.Postings {
		s, err := scale(p.Asset)
		if err != nil {
			return nil, err
		}
		v.Postings = append(v.Postings, posting{FromAccount: p.From, ToAccount: p.To, Amount: money.Format(p.Amount, s), Asset: p.Asset})
	}
	return Marshal(v)
}
