package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
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
		Duration: 300 * time.Millisecond, MinOps: 5, Clients: []int{4}, Accounts: 50, LargeAccounts: 80, HotSlots: 4,
		Scenarios: Scenarios, Modes: []string{ModeHTTP, ModeWrk, ModeStore, ModeOneCall, ModeHTTPCache, ModeHTTPLimits},
		Out: &table, JSON: &lines,
	})
	if err != nil {
		t.Fatal(err)
	}
	// 4 transfer scenarios x (reference, http, wrk, store, one-call), uniform and hot also
	// x (http-cache, http-limits) + reads x (http, wrk, store, http-limits) + cross-shard x
	// (reference, http, wrk, store) + pending-post x (reference, http, store) + replays x
	// (http, http-cache) + uniform on 80 accounts x 5
	if len(results) != 42 {
		t.Fatalf("%d results:\n%s", len(results), table.String())
	}
	for i, r := range results {
		if r.Ops == 0 || r.Errors != 0 || r.Violations != 0 || r.Rejected != 0 {
			t.Errorf("%+v", r)
		}
		if want := map[bool]int{false: 50, true: 80}[i >= 37]; r.Accounts != want {
			t.Errorf("%s/%s ran on %d accounts, want %d", r.Scenario, r.Mode, r.Accounts, want)
		}
		if r.Scenario == Reads || r.Scenario == Replays { // no reference; a replay from Redis writes nothing
			continue
		}
		if r.Mode != ModeReference && r.Ratio == 0 {
			t.Errorf("%s/%s has no ratio to the reference", r.Scenario, r.Mode)
		}
		unbatched := r.Mode == ModeReference || r.Mode == ModeOneCall
		if batched := !unbatched; batched != (r.MeanBatch >= 1) {
			t.Errorf("%s/%s: mean batch %.1f", r.Scenario, r.Mode, r.MeanBatch)
		}
		// Every transfer writes a commit record at least.
		if r.WALBytes < 50 {
			t.Errorf("%s/%s: %.0f bytes of WAL per transfer", r.Scenario, r.Mode, r.WALBytes)
		}
		if r.P50ms <= 0 || r.P99ms < r.P50ms || r.MaxMs < r.P99ms {
			t.Errorf("%s/%s: latencies p50 %.2f p99 %.2f max %.2f", r.Scenario, r.Mode, r.P50ms, r.P99ms, r.MaxMs)
		}
	}
	// CPU is counted in ticks of 10 ms, so a short run may show none for one party; over
	// every run, each party must have been seen working.
	var pg, process, wrk, function float64
	for _, r := range results {
		function += r.FunctionUs
		pg += r.PostgresCPUus
		process += r.ProcessCPUus
		wrk += r.WrkCPUus
		if r.Mode != ModeWrk && r.WrkCPUus != 0 {
			t.Errorf("%s/%s: wrk CPU %.0f µs/op without wrk", r.Scenario, r.Mode, r.WrkCPUus)
		}
	}
	if pg == 0 || process == 0 || wrk == 0 || function == 0 {
		t.Errorf("per op over every run: postgres CPU %.0f µs, this process %.0f µs, wrk %.0f µs; time in the write function %.0f µs", pg, process, wrk, function)
	}
	if n := strings.Count(lines.String(), "\n"); n != len(results) {
		t.Errorf("%d JSON lines for %d results", n, len(results))
	}
	var first Result
	if err := json.Unmarshal([]byte(strings.SplitN(lines.String(), "\n", 2)[0]), &first); err != nil || first.Scenario != Uniform {
		t.Errorf("JSON line: %v %+v", err, first)
	}
	if !strings.Contains(table.String(), "x reference") || !strings.Contains(table.String(), "uniform, 80 accounts >= 0.8x of 50") ||
		!strings.Contains(table.String(), "replays from Redis >= 3x from PostgreSQL") {
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

// TestReferenceIsTheSharedFile: the reference ceiling is the shared file, unedited; the
// hash is the one the file was handed over with.
func TestReferenceIsTheSharedFile(t *testing.T) {
	const handedOver = "5c25e401dea9d8fb2b0f3d4c4daedf47608514f9f4e21ba8a947c29506c23963"
	if sum := sha256.Sum256(ReferenceCeiling); hex.EncodeToString(sum[:]) != handedOver {
		t.Errorf("reference_ceiling.sql has changed: sha256 %x", sum)
	}
	shared, err := os.ReadFile("../../../shared/bench/reference_ceiling.sql")
	if err != nil {
		t.Skipf("no shared copy beside the checkout to compare with: %v", err)
	}
	if !bytes.Equal(shared, ReferenceCeiling) {
		t.Error("reference_ceiling.sql differs from the shared copy")
	}
}

// TestModesTakeTurns: the reference runs first in every round, and every other mode is
// first in some round.
func TestModesTakeTurns(t *testing.T) {
	modes := []string{ModeReference, ModeHTTP, ModeHTTPCache, ModeHTTPLimits}
	firsts := map[string]bool{}
	for round := 1; round <= 3; round++ {
		got := inTurn(modes, round)
		if len(got) != len(modes) || got[0] != ModeReference {
			t.Fatalf("round %d: %v", round, got)
		}
		firsts[got[1]] = true
	}
	if len(firsts) != 3 {
		t.Errorf("first after the reference in three rounds: %v", firsts)
	}
	if got := inTurn([]string{ModeHTTP, ModeHTTPCache}, 2); !slices.Equal(got, []string{ModeHTTPCache, ModeHTTP}) {
		t.Errorf("without a reference, round 2: %v", got)
	}
}

// The event modes run beside ModeHTTP on its service, and the commit-to-Kafka run
// measures something.
func TestEventModesRun(t *testing.T) {
	var table bytes.Buffer
	results, err := Run(context.Background(), Config{
		Duration: 300 * time.Millisecond, MinOps: 5, Clients: []int{4}, Accounts: 50, HotSlots: 4,
		Scenarios: []string{Uniform, Hot, Reads}, Modes: []string{ModeHTTP, ModeHTTPNoOutbox, ModeHTTPEvents},
		EventsRate: 100, EventsFor: time.Second, Out: &table,
	})
	if err != nil {
		t.Fatal(err)
	}
	// uniform and hot x (reference, http, http-no-outbox, http-events) + reads x http +
	// the commit-to-Kafka run
	if len(results) != 10 {
		t.Fatalf("%d results:\n%s", len(results), table.String())
	}
	last := results[len(results)-1]
	if last.Scenario != "commit-to-kafka" || last.Ops < 50 || last.P50ms <= 0 || last.Errors != 0 {
		t.Errorf("commit to Kafka: %+v", last)
	}
	for _, r := range results[:len(results)-1] {
		if r.Ops == 0 || r.Errors != 0 || r.Violations != 0 {
			t.Errorf("%+v", r)
		}
	}
	if !strings.Contains(table.String(), "outbox and relay publishing") {
		t.Errorf("no events figures:\n%s", table.String())
	}
}

// The grpc mode runs transfers and reads through the service's gRPC API, and its
// figures are printed beside HTTP's.
func TestGRPCModeRuns(t *testing.T) {
	var table bytes.Buffer
	results, err := Run(context.Background(), Config{
		Duration: 300 * time.Millisecond, MinOps: 5, Clients: []int{4}, Accounts: 50, HotSlots: 4,
		Scenarios: []string{Uniform, Reads}, Modes: []string{ModeHTTP, ModeGRPC}, Out: &table,
	})
	if err != nil {
		t.Fatal(err)
	}
	// uniform x (reference, http, grpc) + reads x (http, grpc)
	if len(results) != 5 {
		t.Fatalf("%d results:\n%s", len(results), table.String())
	}
	for _, r := range results {
		if r.Ops == 0 || r.Errors != 0 || r.Violations != 0 || r.Rejected != 0 {
			t.Errorf("%+v", r)
		}
	}
	if !strings.Contains(table.String(), "uniform transfers over gRPC") {
		t.Errorf("no gRPC figures:\n%s", table.String())
	}
}

// TestScaleGeneratesAVerifiedLedger runs bench-scale small: the generated journals pass
// verify in full and from the latest checkpoint, and every measurement answers.
func TestScaleGeneratesAVerifiedLedger(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	var out strings.Builder
	rs, err := RunScale(context.Background(), ScaleConfig{Accounts: 500, Entries: 6000, SmallAccounts: 50, SmallEntries: 400,
		Months: 3, Clients: 4, Duration: 300 * time.Millisecond, Rate: 40, Out: &out})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, r := range rs {
		if r.Violations > 0 || r.Errors > 0 || r.Transfers == 0 || r.BalanceP50 == 0 || r.HistoryP50 == 0 || r.PacedRate == 0 || r.BytesPerEntry == 0 {
			t.Errorf("%s: %+v\n%s", r.Database, r, out.String())
		}
	}
	if !strings.Contains(out.String(), "paced transfer p99") {
		t.Errorf("no comparison printed:\n%s", out.String())
	}
}
