// Package metadata validates the free-form JSON object callers attach to accounts and
// transactions, and spells it in one canonical form: the form PostgreSQL's jsonb gives
// back, so that what a POST answers and what a later GET reads are the same bytes, and so
// that nothing a caller sends can be refused by the database once it has joined a batch.
package metadata

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/tallyhq/tally/ledger"
)

// MaxDepth bounds how deeply objects and arrays nest in metadata.
const MaxDepth = 32

// Canonical checks that raw is a JSON object PostgreSQL's jsonb stores as it is, and
// returns it compact, with keys sorted and numbers spelled as jsonb spells them (1e3 is
// 1000, -0 is 0, 1.50 stays 1.50). Empty or null metadata is the empty object. Every
// refusal is a CodeInvalidRequest *ledger.Error that says what to change.
func Canonical(raw json.RawMessage) (json.RawMessage, error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return json.RawMessage("{}"), nil
	}
	if len(raw) > ledger.MaxMetadataBytes {
		return nil, invalid("metadata exceeds %d bytes", ledger.MaxMetadataBytes)
	}
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil || obj == nil {
		return nil, invalid("metadata must be a JSON object")
	}
	if dec.More() {
		return nil, invalid("metadata must be one JSON object")
	}
	canon, err := canonicalValue(obj, 1)
	if err != nil {
		return nil, err
	}
	out, err := marshal(canon)
	if err != nil {
		return nil, invalid("metadata: %v", err)
	}
	if len(out) > ledger.MaxMetadataBytes {
		return nil, invalid("metadata exceeds %d bytes once its numbers are written out in full", ledger.MaxMetadataBytes)
	}
	return out, nil
}

// IsCanonical reports whether m is already in the form Canonical returns; the batcher
// takes nothing else, so no request can make PostgreSQL refuse a batch.
func IsCanonical(m json.RawMessage) bool {
	c, err := Canonical(m)
	return err == nil && bytes.Equal(c, m)
}

// canonicalValue walks a decoded value: strings and keys must not hold U+0000 (jsonb has
// no way to store it), numbers are respelled, and nesting is bounded (PostgreSQL's parser
// recurses, and a deep enough document exhausts its stack).
func canonicalValue(v any, depth int) (any, error) {
	if depth > MaxDepth {
		return nil, invalid("metadata nests deeper than %d levels", MaxDepth)
	}
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			if strings.ContainsRune(k, 0) {
				return nil, invalid("metadata keys must not contain the NUL character (\\u0000)")
			}
			c, err := canonicalValue(e, depth+1)
			if err != nil {
				return nil, err
			}
			v[k] = c
		}
		return v, nil
	case []any:
		for i, e := range v {
			c, err := canonicalValue(e, depth+1)
			if err != nil {
				return nil, err
			}
			v[i] = c
		}
		return v, nil
	case string:
		if strings.ContainsRune(v, 0) {
			return nil, invalid("metadata strings must not contain the NUL character (\\u0000)")
		}
		return v, nil
	case json.Number:
		n, err := Number(string(v))
		if err != nil {
			return nil, err
		}
		return json.Number(n), nil
	default: // bool, nil
		return v, nil
	}
}

// Number spells a JSON number the way PostgreSQL's numeric type prints it: plain decimal
// notation, no exponent, no negative zero, and as many fractional digits as the input
// carried after its exponent is applied (PostgreSQL keeps that display scale). A number
// whose full spelling could not fit in metadata is refused before it is written out.
func Number(s string) (string, error) {
	neg := strings.HasPrefix(s, "-")
	body := strings.TrimPrefix(s, "-")
	mant, expText, hasExp := strings.Cut(strings.ToLower(body), "e")
	exp := 0
	if hasExp {
		e, err := strconv.Atoi(expText)
		if err != nil || e > ledger.MaxMetadataBytes || e < -ledger.MaxMetadataBytes {
			return "", invalid("metadata number %s is out of range", truncate(s))
		}
		exp = e
	}
	intPart, frac, _ := strings.Cut(mant, ".")
	if intPart == "" || !digitsOnly(intPart) || !digitsOnly(frac) {
		return "", invalid("metadata number %s is not a JSON number", truncate(s))
	}
	digits := intPart + frac
	point := len(intPart) + exp // the decimal point sits before digits[point]
	scale := max(len(frac)-exp, 0)
	// Leading zeros move the point, trailing ones beyond the scale cannot occur: the
	// digits after the point are exactly the scale's (or fewer, padded below).
	trimmed := strings.TrimLeft(digits, "0")
	point -= len(digits) - len(trimmed)
	digits = trimmed
	if digits == "" { // zero has no sign and keeps its scale
		if scale > 0 {
			return "0." + strings.Repeat("0", min(scale, ledger.MaxMetadataBytes)), nil
		}
		return "0", nil
	}
	if len(digits)+max(point, 0)-min(point, 0)+scale > ledger.MaxMetadataBytes {
		return "", invalid("metadata number %s is out of range", truncate(s))
	}
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	switch {
	case point <= 0:
		b.WriteByte('0')
	case point >= len(digits):
		b.WriteString(digits)
		b.WriteString(strings.Repeat("0", point-len(digits)))
	default:
		b.WriteString(digits[:point])
	}
	if scale > 0 {
		b.WriteByte('.')
		var fracDigits string
		switch {
		case point < 0:
			fracDigits = strings.Repeat("0", -point) + digits
		case point < len(digits):
			fracDigits = digits[point:]
		}
		if len(fracDigits) > scale {
			return "", fmt.Errorf("metadata: number %s: %d fractional digits for scale %d", s, len(fracDigits), scale)
		}
		b.WriteString(fracDigits)
		b.WriteString(strings.Repeat("0", scale-len(fracDigits)))
	}
	return b.String(), nil
}

func digitsOnly(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func invalid(format string, args ...any) error {
	return ledger.Errorf(ledger.CodeInvalidRequest, format, args...)
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// marshal is json.Marshal without HTML escaping, so stored bytes read as sent.
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}
