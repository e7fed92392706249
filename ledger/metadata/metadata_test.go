package metadata_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/metadata"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func TestCanonical(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{``, `{}`},
		{`null`, `{}`},
		{` { "b" : 1 , "a" : [true, null, "x"] } `, `{"a":[true,null,"x"],"b":1}`},
		{`{"n":1e3}`, `{"n":1000}`},
		{`{"n":1E+3}`, `{"n":1000}`},
		{`{"n":-0}`, `{"n":0}`},
		{`{"n":-0.00}`, `{"n":0.00}`},
		{`{"n":0e5}`, `{"n":0}`},
		{`{"n":1.50}`, `{"n":1.50}`},
		{`{"n":1.50e1}`, `{"n":15.0}`},
		{`{"n":1e-3}`, `{"n":0.001}`},
		{`{"n":-12.5e-2}`, `{"n":-0.125}`},
		{`{"n":0.0001e2}`, `{"n":0.01}`},
		{`{"n":123.456e1}`, `{"n":1234.56}`},
		{`{"s":"\ud800"}`, `{"s":"` + "\uFFFD" + `"}`}, // a lone surrogate decodes to U+FFFD
		{`{"s":"<&>"}`, `{"s":"<&>"}`},
	} {
		got, err := metadata.Canonical(json.RawMessage(c.in))
		if err != nil || string(got) != c.want {
			t.Errorf("Canonical(%s) = %s, %v; want %s", c.in, got, err, c.want)
		}
	}
}

func TestCanonicalRefuses(t *testing.T) {
	for _, in := range []string{
		`[]`, `"x"`, `{"a":1} {}`, `{"a":`,
		`{"a":"\u0000"}`, `{"\u0000":1}`, `{"a":["x\u0000y"]}`,
		`{"a":1e200000}`, `{"a":1e-200000}`, `{"a":1e99999999999999999999}`, `{"a":1e4100}`,
		`{"a":` + strings.Repeat("[", metadata.MaxDepth) + strings.Repeat("]", metadata.MaxDepth) + `}`,
		`{"a":"` + strings.Repeat("x", ledger.MaxMetadataBytes) + `"}`,
	} {
		_, err := metadata.Canonical(json.RawMessage(in))
		if ledger.CodeOf(err) != ledger.CodeInvalidRequest {
			t.Errorf("Canonical(%.60s) = %v, want invalid_request", in, err)
		}
	}
	// the deepest nesting allowed is accepted
	ok := `{"a":` + strings.Repeat("[", metadata.MaxDepth-1) + strings.Repeat("]", metadata.MaxDepth-1) + `}`
	if _, err := metadata.Canonical(json.RawMessage(ok)); err != nil {
		t.Errorf("depth %d refused: %v", metadata.MaxDepth, err)
	}
}

// FuzzCanonicalAgainstPostgres holds Canonical to what PostgreSQL does: whatever it
// accepts, jsonb stores, and reading it back through jsonb and Canonical again gives the
// same bytes (so a POST's answer and a GET's are the same). The seeds are the inputs that
// once failed a whole batch.
func FuzzCanonicalAgainstPostgres(f *testing.F) {
	for _, seed := range []string{
		`{"a":"\u0000"}`, `{"a":1e200000}`, `{"a":"\ud800\udc00"}`, `{"a":"\udfff"}`, `{"a":"\ud800"}`,
		`{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`,
		`{"n":1e3,"m":-0,"k":1.50e1,"j":1e-300,"i":123456789012345678901234567890}`,
		`{"a":"\u2028<>&","b":{"c":[1,2.0,-3e-2]}}`, `{"a":1,"a":2}`, `{"é":"\u00e9"}`,
	} {
		f.Add(seed)
	}
	db := pgtest.NewDB(f)
	conn := db.SuperConn(f)
	f.Fuzz(func(t *testing.T, in string) {
		canon, err := metadata.Canonical(json.RawMessage(in))
		if err != nil {
			return
		}
		if again, err := metadata.Canonical(canon); err != nil || string(again) != string(canon) {
			t.Fatalf("not stable: %s -> %s -> %s, %v", in, canon, again, err)
		}
		var stored string
		if err := conn.QueryRow(context.Background(), "SELECT $1::text::jsonb::text", string(canon)).Scan(&stored); err != nil {
			t.Fatalf("PostgreSQL refused canonical metadata %s (from %q): %v", canon, in, err)
		}
		back, err := metadata.Canonical(json.RawMessage(stored))
		if err != nil || string(back) != string(canon) {
			t.Fatalf("jsonb changed it: %s -> %s -> %s, %v", canon, stored, back, err)
		}
	})
}
