package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestHarnessRuns runs every scenario briefly: the harness must produce a result per
// scenario and mode, with operations done, no errors, and every invariant intact. It says
// nothing about speed: MinOps makes every scenario do some work however slow the machine
// (a run of 300 ms alone once measured 0 operations under -race on a busy machine).
func TestHarnessRuns(t *testing.T) {
	var table, lines bytes.Buffer
	results, err := Run(context.Background(), Config{
		Duration: 300 * time.Millisecond, MinOps: 5, Clients: []int{4}, Accounts: 50,
		Scenarios: []string{Uniform, Hot, Mixed, Reads}, Modes: []string{ModeHTTP, ModeWrk, ModeStore},
		Out: &table, JSON: &lines,
	})
	if err != nil {
		t.Fatal(err)
	}
	// 3 transfer scenarios x (ceiling, http, wrk, store) + reads x (http, wrk, store)
	if len(results) != 15 {
		t.Fatalf("%d results:\n%s", len(results), table.String())
	}
	for _, r := range results {
		if r.Ops == 0 || r.Errors != 0 || r.Violations != 0 || r.Rejected != 0 {
			t.Errorf("%+v", r)
		}
		if r.Mode != ModeCeiling && r.Scenario != Reads && r.Ratio == 0 {
			t.Errorf("%s/%s has no ratio to the ceiling", r.Scenario, r.Mode)
		}
		if batched := r.Mode != ModeCeiling && r.Scenario != Reads; batched != (r.MeanBatch >= 1) {
			t.Errorf("%s/%s: mean batch %.1f", r.Scenario, r.Mode, r.MeanBatch)
		}
		if r.P50ms <= 0 || r.P99ms < r.P50ms || r.MaxMs < r.P99ms {
			t.Errorf("%s/%s: latencies p50 %.2f p99 %.2f max %.2f", r.Scenario, r.Mode, r.P50ms, r.P99ms, r.MaxMs)
		}
	}
	if n := strings.Count(lines.String(), "\n"); n != len(results) {
		t.Errorf("%d JSON lines for %d results", n, len(results))
	}
	var first Result
	if err := json.Unmarshal([]byte(strings.SplitN(lines.String(), "\n", 2)[0]), &first); err != nil || first.Scenario != Uniform {
		t.Errorf("JSON line: %v %+v", err, first)
	}
	if !strings.Contains(table.String(), "x ceiling") {
		t.Errorf("table:\n%s", table.String())
	}
}

func TestHistogramQuantiles(t *testing.T) {
	h := newHistogram()
	for i := 1; i <= 1000; i++ {
		h.add(time.Duration(i) * time.Millisecond)
	}
	for _, c := range []struct{ q, want float64 }{{.5, 500}, {.9, 900}, {.99, 990}, {1, 1000}} {
		if got := h.quantileMs(c.q); got < c.want*0.99 || got > c.want*1.02 {
			t.Errorf("q%.2f = %.1f ms, want about %.0f", c.q, got, c.want)
		}
	}
	if h.n != 1000 || h.max != time.Second {
		t.Errorf("n %d max %s", h.n, h.max)
	}
}

// TestHarnessRounds: with rounds, every round has its own ceiling and ratios, and a
// median line per mode follows them.
func TestHarnessRounds(t *testing.T) {
	var table bytes.Buffer
	results, err := Run(context.Background(), Config{
		Duration: 200 * time.Millisecond, MinOps: 5, Clients: []int{2}, Accounts: 20, Rounds: 3,
		Scenarios: []string{Hot}, Modes: []string{ModeStore}, Out: &table,
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 3*2+2 {
		t.Fatalf("%d results:\n%s", len(results), table.String())
	}
	var ratios []float64
	var ops int64
	for i, r := range results[:6] {
		if r.Round != i/2+1 {
			t.Errorf("result %d is round %d", i, r.Round)
		}
		if r.Mode == ModeStore {
			ratios = append(ratios, r.Ratio)
			ops += r.Ops
		}
	}
	slices.Sort(ratios)
	m := results[7]
	if m.Mode != ModeStore || m.Round != 0 || m.Rounds != 3 || m.Ratio != ratios[1] || m.Ops != ops {
		t.Errorf("median line %+v; round ratios %v, ops %d", m, ratios, ops)
	}
	if !strings.Contains(table.String(), "medians over 3 rounds") {
		t.Errorf("table:\n%s", table.String())
	}
}
