package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/internal/bench"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
)

func runBench(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("bench", out)
	duration := fs.Duration("duration", 10*time.Second, "how long each scenario runs")
	clients := fs.String("clients", "16,64", "concurrent clients, comma-separated")
	scenarios := fs.String("scenarios", strings.Join(bench.Scenarios, ","), "scenarios: "+strings.Join(bench.Scenarios, ", "))
	modes := fs.String("modes", "http,store", "http (through the API, Go client in this process), wrk (through the API, driven by wrk), store (straight into the shard set) one-call (Tally's transaction function once per transfer, unbatched), http-cache (a service keeping answers in Redis), http-limits (a service with rate limits in Redis, none reached), http-no-outbox (the http service with the event outbox off) and/or http-events (the http service with a relay publishing its events to an in-process Kafka; adds a commit-to-Kafka latency run at 2,000 transfers/s), grpc (the http service's gRPC API, Go client in this process); the reference ceiling always runs")
	accounts := fs.Int("accounts", 10000, "accounts to spread uniform transfers over")
	largeAccounts := fs.Int("large-accounts", 0, "if above --accounts, grow to this many accounts at the end and run uniform again at the largest client count")
	hotSlots := fs.Int("hot-slots", 8, "balance slots of Tally's hot account (1: one balance row)")
	referencePath := fs.String("reference", "", "the reference ceiling's SQL (default: the copy built in, identical to the shared reference_ceiling.sql)")
	jsonPath := fs.String("json", "", "also write one JSON object per result to this file")
	writers := fs.Int("writers", 0, "batcher writers per shard (0: the default)")
	maxBatch := fs.Int("max-batch", 0, "largest batch (0: the default)")
	linger := fs.Duration("linger", 0, "batcher linger (0: the default)")
	rounds := fs.Int("rounds", 1, "repeat each scenario and client count, reference and modes in turn, and also report the medians")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run (harness and service) to this file")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *rounds < 1 || *rounds > 99 {
		return fmt.Errorf("--rounds must be 1 to 99")
	}
	tuneGC()
	if *hotSlots < 1 || *hotSlots > ledger.MaxBalanceSlots {
		return fmt.Errorf("--hot-slots must be 1 to %d", ledger.MaxBalanceSlots)
	}
	cfg := bench.Config{Duration: *duration, Accounts: *accounts, LargeAccounts: *largeAccounts, Out: out, Rounds: *rounds, HotSlots: *hotSlots,
		Scenarios: strings.Split(*scenarios, ","), Modes: strings.Split(*modes, ","),
		Batching: batcher.Config{Writers: *writers, MaxBatch: *maxBatch, Linger: *linger}}
	for _, c := range strings.Split(*clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 || n > 1024 {
			return fmt.Errorf("--clients: %q is not a number from 1 to 1024", c)
		}
		cfg.Clients = append(cfg.Clients, n)
	}
	for _, s := range cfg.Scenarios {
		if !slices.Contains(bench.Scenarios, s) {
			return fmt.Errorf("--scenarios: unknown scenario %q", s)
		}
	}
	for _, m := range cfg.Modes {
		if !slices.Contains([]string{bench.ModeHTTP, bench.ModeWrk, bench.ModeStore, bench.ModeOneCall, bench.ModeHTTPCache, bench.ModeHTTPLimits, bench.ModeHTTPNoOutbox, bench.ModeHTTPEvents, bench.ModeGRPC}, m) {
			return fmt.Errorf("--modes: unknown mode %q", m)
		}
	}
	if *accounts < 3 {
		return fmt.Errorf("--accounts must be at least 3")
	}
	if *referencePath != "" {
		sql, err := os.ReadFile(*referencePath)
		if err != nil {
			return fmt.Errorf("--reference: %w", err)
		}
		cfg.Reference = sql
	}
	if *jsonPath != "" {
		f, err := os.Create(*jsonPath)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.JSON = f
	} else {
		cfg.JSON = out
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	_, err := bench.Run(ctx, cfg)
	return err
}

// runBenchScale generates a large and a small ledger database by COPY and measures both
// the same way (make bench-scale).
func runBenchScale(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("bench scale", out)
	accounts := fs.Int("accounts", 10_000_000, "accounts in the large database")
	entries := fs.Int("entries", 100_000_000, "journal entries in the large database (two per transaction)")
	smallAccounts := fs.Int("small-accounts", 10_000, "accounts in the small database")
	smallEntries := fs.Int("small-entries", 100_000, "journal entries in the small database")
	months := fs.Int("months", 12, "monthly partitions the history is spread over")
	clients := fs.Int("clients", 64, "concurrent clients of each closed-loop measurement")
	duration := fs.Duration("duration", 20*time.Second, "how long each measurement runs")
	rate := fs.Int("rate", 2000, "transfers a second of the paced run")
	jsonPath := fs.String("json", "", "also write one JSON object per database to this file")
	sharedBuffers := fs.String("shared-buffers", "", "PostgreSQL's shared_buffers (default: the benches' 1GB)")
	keep := fs.String("keep", "", "leave the generated PostgreSQL data in this directory, to look into after the run")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *accounts < 2 || *smallAccounts < 2 || *months < 1 || *clients < 1 || *rate < 1 {
		return fmt.Errorf("--accounts and --small-accounts must be 2 or more, --months, --clients and --rate 1 or more")
	}
	tuneGC()
	cfg := bench.ScaleConfig{Accounts: *accounts, Entries: *entries, SmallAccounts: *smallAccounts, SmallEntries: *smallEntries,
		Months: *months, Clients: *clients, Duration: *duration, Rate: *rate, Out: out, Keep: *keep, SharedBuffers: *sharedBuffers}
	if *jsonPath != "" {
		f, err := os.Create(*jsonPath)
		if err != nil {
			return err
		}
		defer f.Close()
		cfg.JSON = f
	}
	rs, err := bench.RunScale(ctx, cfg)
	if err != nil {
		return err
	}
	for _, r := range rs {
		if r.Errors > 0 || r.Violations > 0 {
			return ErrFailed
		}
	}
	return nil
}
