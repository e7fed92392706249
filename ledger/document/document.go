// Package document is the ledger's JSON documents: what both APIs answer with (the gRPC
// API's messages are made from them) and what events carry, one rendering of each.
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

// Posting is one movement of a transaction.
type Posting struct {
	FromAccount ledger.AccountID `json:"from_account"`
	ToAccount   ledger.AccountID `json:"to_account"`
	Amount      string           `json:"amount"`
	Asset       string           `json:"asset"`
}

// Transaction is a transaction; reverses names the one it reverses, if any.
type Transaction struct {
	ID        ledger.TransactionID  `json:"id"`
	Postings  []Posting             `json:"postings"`
	Reverses  *ledger.TransactionID `json:"reverses,omitempty"`
	Metadata  json.RawMessage       `json:"metadata"`
	CreatedAt time.Time             `json:"created_at"`
}

// TransactionOf renders tx with each posting's amount in its asset's units (scale says
// an asset's scale), its metadata canonical.
func TransactionOf(tx ledger.Transaction, scale func(asset string) (int, error)) (Transaction, error) {
	meta, err := metadata.Canonical(tx.Metadata)
	if err != nil {
		return Transaction{}, err
	}
	v := Transaction{ID: tx.ID, Metadata: meta, CreatedAt: tx.CreatedAt.UTC(), Postings: make([]Posting, 0, len(tx.Postings))}
	if tx.Reverses != (ledger.TransactionID{}) {
		v.Reverses = &tx.Reverses
	}
	for _, p := range tx.Postings {
		s, err := scale(p.Asset)
		if err != nil {
			return Transaction{}, err
		}
		v.Postings = append(v.Postings, Posting{FromAccount: p.From, ToAccount: p.To, Amount: money.Format(p.Amount, s), Asset: p.Asset})
	}
	return v, nil
}
