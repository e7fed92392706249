package httpapi

import (
	"errors"
	"testing"

	"github.com/tallyhq/tally/ledger"
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
			if _, merr := canonicalMetadata(req.Metadata); merr != nil && ledger.CodeOf(merr) != ledger.CodeInvalidRequest {
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

func TestCanonicalMetadata(t *testing.T) {
	tests := map[string]string{
		``:                                      `{}`,
		`null`:                                  `{}`,
		`{ "b" : 1, "a" : "<x>" }`:              `{"a":"<x>","b":1}`,
		`{"n":1.50,"big":12345678901234567890}`: `{"big":12345678901234567890,"n":1.50}`,
	}
	for in, want := range tests {
		got, err := canonicalMetadata([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("canonicalMetadata(%q) = %s, %v; want %s", in, got, err, want)
		}
	}
	for _, bad := range []string{`[]`, `"x"`, `1`, `{"a":}`} {
		if _, err := canonicalMetadata([]byte(bad)); err == nil {
			t.Errorf("canonicalMetadata(%q) accepted", bad)
		}
	}
}
