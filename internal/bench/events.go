package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger/events"
	"github.com/tallyhq/tally/ledger/migrations"
)

// The event modes (issue 19): the ModeHTTP service itself, its rounds run with the
// outbox off, or with a relay publishing every event to Kafka (kfake, in process).
// ModeHTTP is as shipped: the outbox written, no relay.
const (
	// ModeHTTPNoOutbox disables the outbox triggers while its rounds run.
	ModeHTTPNoOutbox = "http-no-outbox"
	// ModeHTTPEvents runs a relay into Kafka while its rounds run, and measures how long
	// each event takes from its transaction's creation to a consumer.
	ModeHTTPEvents = "http-events"
	// EventsRate is the pace of the commit-to-Kafka latency run, transfers a second.
	EventsRate = 2000
)

const (
	eventsTopic    = "tally.events"
	relayLogin     = "tally_relayer"
	relayPassword  = "bench-relay"
	eventsLatencyD = 10 * time.Second
)

// outboxTriggers are the triggers that write the outbox (migration 012).
var outboxTriggers = map[string][]string{
	"tally.entries":           {"entries_outbox"},
	"tally.accounts":          {"accounts_outbox_opened", "accounts_outbox_changed"},
	"tally.pending_transfers": {"pending_transfers_outbox_created", "pending_transfers_outbox_resolved"},
	"tally.inbound_transfers": {"inbound_transfers_outbox"},
}

func viaEvents(mode string) bool { return mode == ModeHTTPNoOutbox || mode == ModeHTTPEvents }

// eventsEnv is the event modes' Kafka and the shards' relay logins.
type eventsEnv struct {
	kafka     *kfake.Cluster
	superDSNs []string // the shards', as the schema owner (to switch the outbox off)
	relayDSNs []string
	lat       *histogram // the latest relay round's event latencies
	latMu     sync.Mutex
}

// startEvents prepares the event modes, when asked for: the relay's login on each shard,
// an in-process Kafka, and the modes' service (ModeHTTP's).
func (e *env) startEvents(ctx context.Context, modes []string) error {
	if !slices.ContainsFunc(modes, viaEvents) {
		return nil
	}
	ev := &eventsEnv{}
	for _, db := range []string{"tally", shard1Database} {
		conn, err := pgx.Connect(ctx, e.pg.DSN(db))
		if err != nil {
			return err
		}
		err = migrations.GrantRelay(ctx, conn, relayLogin, relayPassword)
		conn.Close(ctx)
		if err != nil {
			return err
		}
		ev.superDSNs = append(ev.superDSNs, e.pg.DSN(db))
		ev.relayDSNs = append(ev.relayDSNs, strings.Replace(e.pg.DSN(db), postgres.Superuser+"@", relayLogin+":"+relayPassword+"@", 1))
	}
	var err error
	if ev.kafka, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(8, eventsTopic)); err != nil {
		return fmt.Errorf("bench: kafka: %w", err)
	}
	e.events = ev
	for _, mode := range []string{ModeHTTPNoOutbox, ModeHTTPEvents} {
		e.services[mode] = e.services[ModeHTTP]
	}
	return nil
}

func (ev *eventsEnv) close() {
	if ev != nil {
		ev.kafka.Close()
	}
}

// eventsRound sets a round of an event mode up: the outbox off, or a relay and a
// consumer running with the outbox drained first. end undoes it.
func (e *env) eventsRound(ctx context.Context, mode string) (end func(), err error) {
	switch mode {
	case ModeHTTPNoOutbox:
		if err := e.events.switchOutbox(ctx, "DISABLE"); err != nil {
			return nil, err
		}
		return func() { _ = e.events.switchOutbox(context.WithoutCancel(ctx), "ENABLE") }, nil
	case ModeHTTPEvents:
		return e.events.relay(ctx, false)
	}
	return func() {}, nil
}

func (ev *eventsEnv) switchOutbox(ctx context.Context, how string) error {
	for _, dsn := range ev.superDSNs {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		for table, triggers := range outboxTriggers {
			for _, t := range triggers {
				if _, err := conn.Exec(ctx, "ALTER TABLE "+table+" "+how+" TRIGGER "+t); err != nil {
					conn.Close(ctx)
					return fmt.Errorf("bench: %s %s: %w", how, t, err)
				}
			}
		}
		conn.Close(ctx)
	}
	return nil
}

// relay runs the shards' relays, once the outbox is drained of what other modes' rounds
// wrote, and with measure a consumer that records each event's latency (from the commit
// that wrote it to the consumer) in ev.lat. (Without: a consumer is a downstream
// system's cost, not Tally's.)
func (ev *eventsEnv) relay(ctx context.Context, measure bool) (stop func(), err error) {
	producer, err := events.NewProducer(events.Kafka{Brokers: ev.kafka.ListenAddrs()})
	if err != nil {
		return nil, err
	}
	consumer, err := kgo.NewClient(kgo.SeedBrokers(ev.kafka.ListenAddrs()...), kgo.ConsumeTopics(eventsTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))
	if err != nil {
		producer.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_ = events.RunShards(runCtx, ev.relayDSNs, events.Config{Client: producer, Topic: eventsTopic,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	var measuring atomic.Bool
	lat := newHistogram()
	go func() {
		defer wg.Done()
		seen := map[[2]int64]bool{}
		for measure && runCtx.Err() == nil {
			fetches := consumer.PollFetches(runCtx)
			now := time.Now()
			fetches.EachRecord(func(r *kgo.Record) {
				var e struct {
					Shard    int64
					Sequence int64
					Time     time.Time
				}
				if json.Unmarshal(r.Value, &e) != nil || seen[[2]int64{e.Shard, e.Sequence}] {
					return
				}
				seen[[2]int64{e.Shard, e.Sequence}] = true
				if measuring.Load() {
					ev.latMu.Lock()
					lat.add(now.Sub(e.Time))
					ev.latMu.Unlock()
				}
			})
		}
	}()
	stop = func() {
		cancel()
		wg.Wait()
		consumer.Close()
		producer.Close()
		ev.latMu.Lock()
		ev.lat = lat
		ev.latMu.Unlock()
	}
	if err := ev.drained(ctx, time.Minute); err != nil {
		stop()
		return nil, err
	}
	measuring.Store(true)
	return stop, nil
}

// drained waits until every shard's outbox is empty.
func (ev *eventsEnv) drained(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for _, dsn := range ev.superDSNs {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		for {
			var n int64
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM tally.outbox").Scan(&n); err != nil {
				conn.Close(ctx)
				return err
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				conn.Close(ctx)
				return fmt.Errorf("bench: the relay left %d events in an outbox after %s", n, within)
			}
			time.Sleep(100 * time.Millisecond)
		}
		conn.Close(ctx)
	}
	return nil
}

// eventLatency posts uniform transfers at rate a second through the ModeHTTP service
// for d, with the relays running, and returns the achieved rate and each event's
// latency from its transaction's creation to a consumer.
func (e *env) eventLatency(ctx context.Context, rate int, d time.Duration) (Result, error) {
	stop, err := e.events.relay(ctx, true)
	if err != nil {
		return Result{}, err
	}
	pick := e.pick(Uniform)
	var sent, failed atomic.Int64
	jobs := make(chan struct{}, rate)
	var wg sync.WaitGroup
	for w := range 128 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 19))
			for range jobs {
				from, to := pick(rng)
				body := `{"from_account":"` + e.accounts[from].String() + `","to_account":"` + e.accounts[to].String() + `","amount":"1.00","asset":"USD"}`
				refused, err := e.httpDo(ctx, http.MethodPost, "/v1/transfers", body, map[string]string{"Idempotency-Key": "ev-" + strconv.FormatInt(e.seq.Add(1), 10)})
				if err != nil || refused {
					failed.Add(1)
				}
				sent.Add(1)
			}
		}()
	}
	const tick = 5 * time.Millisecond
	ticker := time.NewTicker(tick)
	began := time.Now()
	due := 0
	for now := range ticker.C {
		elapsed := now.Sub(began)
		if elapsed >= d {
			break
		}
		for want := int(elapsed.Seconds() * float64(rate)); due < want; due++ {
			select {
			case jobs <- struct{}{}:
			default: // the service is behind: the job is not sent, and the rate shows it
			}
		}
	}
	ticker.Stop()
	close(jobs)
	wg.Wait()
	elapsed := time.Since(began)
	time.Sleep(time.Second) // the last events on their way
	stop()
	h := e.events.lat
	return Result{Scenario: "commit-to-kafka", Mode: ModeHTTPEvents, Seconds: elapsed.Seconds(), Ops: sent.Load(),
		PerSecond: float64(sent.Load()) / elapsed.Seconds(), Errors: failed.Load(),
		P50ms: h.quantileMs(0.5), P90ms: h.quantileMs(0.9), P99ms: h.quantileMs(0.99), MaxMs: h.quantileMs(1)}, nil
}

// printEventsTargets prints issue 19's figures: the outbox's cost, with and without a
// relay publishing, and the latency from commit to Kafka at EventsRate.
func printEventsTargets(w io.Writer, results []Result, latency *Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	header := printRatios(tw, "events (issue 19)", results, []ratioTarget{
		{"uniform, outbox written (no relay) >= 0.9x outbox off", Uniform, ModeHTTP, ModeHTTPNoOutbox, 0.9},
		{"uniform, outbox and relay publishing >= 0.9x outbox off", Uniform, ModeHTTPEvents, ModeHTTPNoOutbox, 0.9},
		{"hot, outbox written (no relay) >= 0.9x outbox off", Hot, ModeHTTP, ModeHTTPNoOutbox, 0.9},
		{"hot, outbox and relay publishing >= 0.9x outbox off", Hot, ModeHTTPEvents, ModeHTTPNoOutbox, 0.9},
	})
	if latency != nil {
		if !header {
			fmt.Fprintf(tw, "\nevents (issue 19)\tmode\tmeasured\tmet\n")
		}
		// (a run paced below EventsRate, as the tests' is, never meets the target)
		fmt.Fprintf(tw, "commit to Kafka p99 < 100 ms at %d transfers/s\t%s\tp50 %.1f ms, p99 %.1f ms, max %.0f ms at %.0f/s (%d failed)\t%s\n",
			EventsRate, latency.Mode, latency.P50ms, latency.P99ms, latency.MaxMs, latency.PerSecond, latency.Errors,
			yes(latency.P99ms < 100 && latency.PerSecond >= 0.95*EventsRate))
	}
	tw.Flush()
}

func yes(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}
