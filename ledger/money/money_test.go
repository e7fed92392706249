package money

import (
	"errors"
	"math"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in    string
		scale int
		want  int64
		ok    bool
	}{
		{"12.34", 2, 1234, true},
		{"12.3", 2, 1230, true},
		{"12", 2, 1200, true},
		{"0.01", 2, 1, true},
		{"-5.5", 1, -55, true},
		{"007", 0, 7, true},
		{"9223372036854775807", 0, math.MaxInt64, true},
		{"-9223372036854775808", 0, math.MinInt64, true},
		{"92233720368547758.07", 2, math.MaxInt64, true},
		{"9223372036854775808", 0, 0, false},
		{"-9223372036854775809", 0, 0, false},
		{"12.345", 2, 0, false},
		{"1.0", 0, 0, false},
		{"", 2, 0, false},
		{".5", 2, 0, false},
		{"5.", 2, 0, false},
		{"+5", 2, 0, false},
		{"1e3", 2, 0, false},
		{" 1", 2, 0, false},
		{"1,000", 2, 0, false},
		{"--1", 2, 0, false},
		{"-", 2, 0, false},
		{"0x10", 2, 0, false},
		{"١٢", 0, 0, false},
		{"1", 19, 0, false},
	}
	for _, tt := range tests {
		got, err := Parse(tt.in, tt.scale)
		if tt.ok && (err != nil || got != tt.want) {
			t.Errorf("Parse(%q, %d) = %d, %v; want %d", tt.in, tt.scale, got, err, tt.want)
		}
		if !tt.ok && (err == nil || !errors.Is(err, ErrInvalidAmount)) {
			t.Errorf("Parse(%q, %d) = %d, %v; want ErrInvalidAmount", tt.in, tt.scale, got, err)
		}
	}
}

func TestFormat(t *testing.T) {
	tests := []struct {
		v     int64
		scale int
		want  string
	}{
		{1234, 2, "12.34"},
		{1, 2, "0.01"},
		{-1, 2, "-0.01"},
		{0, 2, "0.00"},
		{0, 0, "0"},
		{-55, 1, "-5.5"},
		{math.MinInt64, 0, "-9223372036854775808"},
		{math.MinInt64, 18, "-9.223372036854775808"},
		{math.MaxInt64, 18, "9.223372036854775807"},
		{5, 18, "0.000000000000000005"},
	}
	for _, tt := range tests {
		if got := Format(tt.v, tt.scale); got != tt.want {
			t.Errorf("Format(%d, %d) = %q; want %q", tt.v, tt.scale, got, tt.want)
		}
	}
}

// FuzzParse checks that whatever parses formats back to the same value and that
// formatting is a fixed point of parsing.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"12.34", "-0.01", "9223372036854775807", "1.", ".1", "1e5", "00.10"} {
		f.Add(s, 2)
	}
	f.Fuzz(func(t *testing.T, s string, scale int) {
		scale = ((scale % (MaxScale + 1)) + MaxScale + 1) % (MaxScale + 1)
		v, err := Parse(s, scale)
		if err != nil {
			if !errors.Is(err, ErrInvalidAmount) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrInvalidAmount", s, err)
			}
			return
		}
		out := Format(v, scale)
		back, err := Parse(out, scale)
		if err != nil || back != v {
			t.Fatalf("Parse(Format(%d)) = %d, %v via %q", v, back, err, out)
		}
	})
}
