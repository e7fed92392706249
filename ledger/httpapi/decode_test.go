package httpapi

import (
	"errors"
	"testing"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/metadata"
)

// FuzzDecodeTransfer feeds arbitrary bodies to the request decoder: it must never panic,
// and must either decode or fail with a client error, never a server one.
func FuzzDecodeTransfer(f *testing.F) {
	for _, s := range []string{
		`{"from_account":"external","to_account":"x","amount":"1.00","asset":"USD"}`,
		`{"from_account":1}`, `{"metadata":{"a":[1,{"b":null}]}}`, `{} {}`, `[`, ``, `null`, `{"amount":"1e400"}`,
		`{"postings":[{"amount":"1"}]}`, "{\"x\":\"\xff\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req transferRequest
		err := decodeBytes(body, &req)
		if err == nil {
			if _, merr := metadata.Canonical(req.Metadata); merr != nil && ledger.CodeOf(merr) != ledger.CodeInvalidRequest {
				t.Fatalf("metadata error %v is not a client error", merr)
			}
			return
		}
		var le *ledger.Error
		if !errors.As(err, &le) || le.Code.Status() >= 500 {
			t.Fatalf("decode error %v is not a client error", err)
		}
		var tx transactionRequest
		_ = decodeBytes(body, &tx)
	})
}
