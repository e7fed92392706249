// Package money converts between decimal strings at the API edge and the integer counts
// of minor units that the ledger stores. Nothing in Tally does arithmetic on floats.
package money

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// MaxScale is the largest number of decimal places an asset may have; 10^18 still fits
// an int64 with room for one whole unit.
const MaxScale = 18

// maxAmountLength bounds the text we try to parse: 19 digits, a point and a sign.
const maxAmountLength = 40

// ErrInvalidAmount is wrapped by every parse error.
var ErrInvalidAmount = errors.New("invalid amount")

// Parse reads a decimal string such as "12.34" as a count of minor units at the given
// scale. It accepts an optional leading '-', digits, and at most scale decimals; no
// exponent, no grouping, no '+', no surrounding space, no leading '.' or trailing '.'.
func Parse(s string, scale int) (int64, error) {
	if scale < 0 || scale > MaxScale {
		return 0, fmt.Errorf("%w: scale %d out of range 0..%d", ErrInvalidAmount, scale, MaxScale)
	}
	if s == "" || len(s) > maxAmountLength {
		return 0, fmt.Errorf("%w: %q must be a decimal number of at most %d characters", ErrInvalidAmount, s, maxAmountLength)
	}
	neg := false
	body := s
	if body[0] == '-' {
		neg, body = true, body[1:]
	}
	whole, frac, hasPoint := strings.Cut(body, ".")
	if whole == "" || (hasPoint && frac == "") || !digits(whole) || !digits(frac) {
		return 0, fmt.Errorf("%w: %q is not a decimal number like 12.34", ErrInvalidAmount, s)
	}
	if len(frac) > scale {
		return 0, fmt.Errorf("%w: %q has %d decimals, the asset allows %d", ErrInvalidAmount, s, len(frac), scale)
	}
	digitsText := whole + frac + strings.Repeat("0", scale-len(frac))
	v, err := strconv.ParseUint(digitsText, 10, 64)
	if err != nil || (!neg && v > math.MaxInt64) || (neg && v > uint64(math.MaxInt64)+1) {
		return 0, fmt.Errorf("%w: %q is too large", ErrInvalidAmount, s)
	}
	if neg {
		return int64(-v), nil // two's complement: -(MaxInt64+1) wraps to MinInt64 exactly
	}
	return int64(v), nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// Format prints minor units as a decimal string with exactly scale decimals.
func Format(v int64, scale int) string {
	neg := v < 0
	var mag uint64
	if neg {
		mag = uint64(-(v + 1)) + 1 // safe for MinInt64
	} else {
		mag = uint64(v)
	}
	s := strconv.FormatUint(mag, 10)
	if scale > 0 {
		if len(s) <= scale {
			s = strings.Repeat("0", scale-len(s)+1) + s
		}
		s = s[:len(s)-scale] + "." + s[len(s)-scale:]
	}
	if neg {
		return "-" + s
	}
	return s
}
