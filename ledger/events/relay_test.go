package events_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tallyhq/tally/internal/eventstest"
	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/events"
	"github.com/tallyhq/tally/ledger/store"
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(runChild())
	}
	pgtest.Main(m)
}

const topic = "tally.events"

// fixture is a fresh shard-0 database with USD registered, and a Kafka (kfake).
type fixture struct {
	t        *testing.T
	db       *pgtest.DB
	store    *store.Store
	external ledger.AccountID
	kafka    *kfake.Cluster
	addrs    []string
}

func newFixture(t *testing.T, kafkaOpts ...kfake.Opt) *fixture {
	t.Helper()
	db := pgtest.NewDB(t)
	s := store.New(db.AppPool(t, 16))
	extID, err := ledger.NewAccountID(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := s.RegisterAsset(context.Background(), "USD", 2, extID); err != nil {
		t.Fatalf("register USD: %v", err)
	}
	f := &fixture{t: t, db: db, store: s, external: extID}
	f.startKafka(kafkaOpts...)
	return f
}

func (f *fixture) startKafka(opts ...kfake.Opt) {
	f.t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(4, topic)}, opts...)...)
	if err != nil {
		f.t.Fatalf("kfake: %v", err)
	}
	f.kafka, f.addrs = c, c.ListenAddrs()
	f.t.Cleanup(c.Close)
}

// relay runs one relay for shard 0 until the returned stop is called (or the test ends).
func (f *fixture) relay(name string, reg *prometheus.Registry) (stop func()) {
	f.t.Helper()
	producer, err := events.NewProducer(events.Kafka{Brokers: f.addrs})
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		err := events.Run(ctx, events.Config{DSN: f.db.RelayDSN(), Client: producer, Topic: topic,
			Log: testLog(f.t, name), Metrics: events.NewMetrics(reg)})
		if err != nil {
			f.t.Errorf("relay %s: %v", name, err)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			<-done
			producer.Close()
		})
	}
	f.t.Cleanup(stop)
	return stop
}

func testLog(t *testing.T, name string) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})).With("relay", name)
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

func (f *fixture) account(owner string) ledger.AccountID {
	f.t.Helper()
	id, err := ledger.NewAccountID(0)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.store.CreateAccount(context.Background(), ledger.Account{ID: id, Owner: owner, Asset: "USD"}); err != nil {
		f.t.Fatalf("create account: %v", err)
	}
	return id
}

func request(t testing.TB, key string, postings ...ledger.Posting) store.Request {
	t.Helper()
	id, err := ledger.NewTransactionID(0)
	if err != nil {
		t.Fatal(err)
	}
	return store.Request{
		Caller: "test", Key: key, Hash: sha256.Sum256([]byte(key)),
		Transaction: ledger.Transaction{ID: id, Postings: postings, CreatedAt: time.Now().UTC().Truncate(time.Microsecond),
			Metadata: json.RawMessage(`{"note":"` + key + `"}`)},
		Body: []byte(`{"id":"` + id.String() + `"}`),
	}
}

func usd(from, to ledger.AccountID, amount int64) ledger.Posting {
	return ledger.Posting{From: from, To: to, Amount: amount, Asset: "USD"}
}

// post posts one transfer and returns its transaction id, or the zero id when refused.
func (f *fixture) post(poster interface {
	PostTransaction(context.Context, store.Request) (ledger.Outcome, error)
}, key string, postings ...ledger.Posting) ledger.TransactionID {
	f.t.Helper()
	req := request(f.t, key, postings...)
	out, err := poster.PostTransaction(context.Background(), req)
	if err != nil {
		f.t.Errorf("post %s: %v", key, err)
		return ledger.TransactionID{}
	}
	if out.Status != 201 {
		return ledger.TransactionID{}
	}
	return req.Transaction.ID
}

// step is a two-phase step under a fresh key.
func (f *fixture) step(key string) store.Step {
	f.t.Helper()
	id, err := ledger.NewTransactionID(0)
	if err != nil {
		f.t.Fatal(err)
	}
	return store.Step{Caller: "test", Key: key, Hash: sha256.Sum256([]byte(key)), ID: id,
		CreatedAt: time.Now().UTC().Truncate(time.Microsecond), Metadata: []byte(`{"note":"` + key + `"}`)}
}

type received = eventstest.Received

func (f *fixture) consume(within time.Duration, done func([]received) bool) []received {
	f.t.Helper()
	return eventstest.Consume(f.t, f.addrs, topic, within, done)
}

func distinct(t *testing.T, got []received) []events.Event {
	t.Helper()
	return eventstest.Distinct(t, got)
}

// committed is how many transactions and outbox rows the database holds: what the
// consumer must end up with.
func (f *fixture) committed() (transactions, all int) {
	f.t.Helper()
	conn := f.db.SuperConn(f.t)
	err := conn.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM tally.transactions),
		(SELECT published FROM tally.outbox_progress) + (SELECT count(*) FROM tally.outbox)`).Scan(&transactions, &all)
	if err != nil {
		f.t.Fatal(err)
	}
	return transactions, all
}

func (f *fixture) outboxRows() int {
	f.t.Helper()
	var n int
	if err := f.db.SuperConn(f.t).QueryRow(context.Background(), "SELECT count(*) FROM tally.outbox").Scan(&n); err != nil {
		f.t.Fatal(err)
	}
	return n
}

func haveSequences(n int) func([]received) bool { return eventstest.HaveSequences(n) }

// metric reads one series of a registry's metric (the shard 0 one).
func metric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, fam := range families {
		if fam.GetName() != name {
			continue
		}
		for _, m := range fam.GetMetric() {
			switch {
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Counter != nil:
				return m.Counter.GetValue()
			}
		}
	}
	return 0
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", within, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestEveryChangeIsPublishedWithTheMoney(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a, b := f.account("alice"), f.account("bob")
	funded := f.post(f.store, "fund", usd(f.external, a, 100_00))
	b1, err := batcher.New(f.store, batcher.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b1.Start()
	defer b1.Stop()
	var mu sync.Mutex
	posted := map[string]bool{funded.String(): true}
	var wg sync.WaitGroup
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := f.post(b1, fmt.Sprint("pay-", i), usd(a, b, 1_23))
			mu.Lock()
			defer mu.Unlock()
			posted[id.String()] = true
		}()
	}
	wg.Wait()
	if refused := f.post(f.store, "too-much", usd(b, a, 1_000_00)); refused != (ledger.TransactionID{}) {
		t.Fatalf("a transfer above the balance was posted")
	}
	// A change rolled back is no event.
	tx, err := f.db.SuperConn(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT tally.set_account_status($1, 'frozen')", [16]byte(a)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for _, st := range []ledger.Status{ledger.StatusFrozen, ledger.StatusActive} {
		if _, err := f.store.SetStatus(ctx, b, st); err != nil {
			t.Fatal(err)
		}
	}
	// a pending transfer of 5.00, posted for 4.50 (the reservation and the posting are
	// transactions too, and the holding account opens)
	holding, _ := ledger.NewAccountID(0)
	clearing, _ := ledger.NewAccountID(0)
	reserve := f.step("reserve")
	out, err := f.store.Reserve(ctx, reserve, store.Reservation{From: a, To: b, Amount: 5_00, Asset: "USD", HoldingID: holding, ClearingID: clearing})
	if err != nil || out.Status != 201 {
		t.Fatalf("reserve: %v %s", err, out.Body)
	}
	post := f.step("post")
	if out, err := f.store.Resolve(ctx, post, reserve.ID, ledger.ResolvePost, 4_50); err != nil || out.Status != 201 {
		t.Fatalf("post: %v %s", err, out.Body)
	}
	posted[reserve.ID.String()], posted[post.ID.String()] = true, true

	reg := prometheus.NewRegistry()
	f.relay("one", reg)
	transactions, all := f.committed()
	if transactions != len(posted) {
		t.Fatalf("%d transactions in the journal, %d posted", transactions, len(posted))
	}
	got := f.consume(time.Minute, haveSequences(all))
	evs := distinct(t, got)
	if len(evs) != all {
		t.Fatalf("%d events received, %d committed", len(evs), all)
	}
	byType := map[string]int{}
	for _, e := range evs {
		byType[e.Type]++
		if e.Version != events.SchemaVersion || e.Shard != 0 || e.ID == (uuid.UUID{}) || e.Time.IsZero() {
			t.Errorf("event %d: version %d shard %d id %s time %s", e.Sequence, e.Version, e.Shard, e.ID, e.Time)
		}
		if e.Type != "transaction.committed" {
			continue
		}
		var data struct {
			ID       string            `json:"id"`
			Metadata map[string]string `json:"metadata"`
			Postings []struct {
				From   string `json:"from_account"`
				To     string `json:"to_account"`
				Amount string `json:"amount"`
				Asset  string `json:"asset"`
			} `json:"postings"`
		}
		if err := json.Unmarshal(e.Data, &data); err != nil {
			t.Fatalf("event %d data %s: %v", e.Sequence, e.Data, err)
		}
		if !posted[data.ID] {
			t.Errorf("event %d is of transaction %s, which was not posted", e.Sequence, data.ID)
		}
		delete(posted, data.ID)
		if len(data.Postings) == 0 || data.Metadata["note"] == "" {
			t.Fatalf("event %d data: %s", e.Sequence, e.Data)
		}
		if p := data.Postings[0]; p.Asset != "USD" || !slices.Contains([]string{"1.23", "100.00", "5.00", "4.50"}, p.Amount) {
			t.Errorf("event %d posting: %+v", e.Sequence, p)
		}
	}
	var pending, settled map[string]any
	for _, e := range evs {
		switch e.Type {
		case "transfer.pending":
			pending = map[string]any{}
			_ = json.Unmarshal(e.Data, &pending)
		case "transfer.posted":
			settled = map[string]any{}
			_ = json.Unmarshal(e.Data, &settled)
		}
	}
	if pending["amount"] != "5.00" || pending["state"] != "pending" || settled["posted_amount"] != "4.50" ||
		settled["state"] != "posted" || settled["resolved_by"] != post.ID.String() {
		t.Errorf("transfer events: pending %v, posted %v", pending, settled)
	}
	if len(posted) != 0 {
		t.Errorf("transactions without an event: %v", posted)
	}
	// external USD, alice, bob, the holding account; 43 transactions; bob frozen and
	// unfrozen (the rolled-back freeze of alice is not there); the pending transfer made
	// and posted
	want := map[string]int{"account.opened": 4, "transaction.committed": 43, "account.frozen": 1, "account.unfrozen": 1,
		"transfer.pending": 1, "transfer.posted": 1}
	for typ, n := range want {
		if byType[typ] != n {
			t.Errorf("%d events %s, want %d (all: %v)", byType[typ], typ, n, byType)
		}
	}
	// one record per account concerned, keyed by it, with the CloudEvents attributes
	records := map[int64]int{}
	for _, r := range got {
		records[r.Sequence]++
		if r.Headers["ce_specversion"] != "1.0" || r.Headers["ce_type"] != "dev.tally."+r.Type ||
			r.Headers["ce_subject"] != r.Account.String() || r.Headers["ce_id"] != r.ID.String()+"/"+r.Account.String() {
			t.Errorf("record of event %d: headers %v", r.Sequence, r.Headers)
		}
	}
	for _, e := range evs {
		if want := map[bool]int{true: 2, false: 1}[e.Type == "transaction.committed"]; records[e.Sequence] < want {
			t.Errorf("event %d (%s) came in %d records, want %d", e.Sequence, e.Type, records[e.Sequence], want)
		}
	}
	eventually(t, 30*time.Second, "the published rows to leave the outbox", func() bool { return f.outboxRows() == 0 })
	if got := metric(t, reg, "tally_events_published_total"); got != float64(all) {
		t.Errorf("published metric %v, want %d", got, all)
	}
}

// TestOneAccountsEventsComeInCommitOrder posts, from many clients at once, transactions
// that touch one account and others in both orders, so the transactions given ids first
// are not always the ones committed first. The account's records, read from its
// partition, must follow its balance: each entry's balance is the one before plus its
// amount.
func TestOneAccountsEventsComeInCommitOrder(t *testing.T) {
	f := newFixture(t)
	hot := f.account("hot")
	others := []ledger.AccountID{f.account("a"), f.account("b"), f.account("c")}
	f.post(f.store, "fund-hot", usd(f.external, hot, 1_000_000_00))
	for i, o := range others {
		f.post(f.store, fmt.Sprint("fund-", i), usd(f.external, o, 1_000_000_00))
	}
	b, err := batcher.New(f.store, batcher.Config{Writers: 4})
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	defer b.Stop()
	f.relay("one", prometheus.NewRegistry())
	var wg sync.WaitGroup
	for c := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				o := others[(c+i)%len(others)]
				key := fmt.Sprint("c", c, "-", i)
				switch i % 3 {
				case 0: // the hot account first, then another
					f.post(b, key, usd(hot, o, 1), usd(o, others[(c+i+1)%len(others)], 2))
				case 1: // another first, then the hot account
					f.post(f.store, key, usd(o, others[(c+i+1)%len(others)], 3), usd(o, hot, 4))
				default:
					f.post(b, key, usd(o, hot, 5))
				}
			}
		}()
	}
	wg.Wait()
	_, all := f.committed()
	got := f.consume(time.Minute, haveSequences(all))
	distinct(t, got)

	// the hot account's transactions, in the order its partition gave them (first copy)
	var order []string
	seen := map[int64]bool{}
	for _, r := range got {
		if r.Account != uuid.UUID(hot) || r.Type != "transaction.committed" || seen[r.Sequence] {
			continue
		}
		seen[r.Sequence] = true
		var data struct{ ID string }
		if err := json.Unmarshal(r.Data, &data); err != nil {
			t.Fatal(err)
		}
		order = append(order, data.ID)
	}
	if len(order) < 8*40 {
		t.Fatalf("%d transactions of the hot account received", len(order))
	}
	rows, err := f.db.SuperConn(t).Query(context.Background(), `
		SELECT e.amount, e.balance_after FROM unnest($1::uuid[]) WITH ORDINALITY AS o(id, n)
		JOIN tally.entries e ON e.transaction_id = o.id AND e.account_id = $2
		ORDER BY o.n, e.id`, order, [16]byte(hot))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var balance int64
	for i := 0; rows.Next(); i++ {
		var amount, after int64
		if err := rows.Scan(&amount, &after); err != nil {
			t.Fatal(err)
		}
		if i > 0 && after-amount != balance {
			t.Fatalf("entry %d of the hot account as received: %d after %d, but the balance before it was %d: out of commit order", i, after, amount, balance)
		}
		balance = after
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}

// TestAChangeThatWaitedForAnotherComesAfterIt: an account is unfrozen by a transaction
// that holds its lock while a transfer from it waits; the transfer commits second, and
// its event comes second, though both were under way at once.
func TestAChangeThatWaitedForAnotherComesAfterIt(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	x, y := f.account("x"), f.account("y")
	f.post(f.store, "fund", usd(f.external, x, 10_00))
	if _, err := f.store.SetStatus(ctx, x, ledger.StatusFrozen); err != nil {
		t.Fatal(err)
	}
	unfreeze, err := f.db.SuperConn(t).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unfreeze.Rollback(ctx) //nolint:errcheck // committed below
	if _, err := unfreeze.Exec(ctx, "SELECT tally.set_account_status($1, 'active')", [16]byte(x)); err != nil {
		t.Fatal(err)
	}
	paid := make(chan ledger.TransactionID)
	go func() { paid <- f.post(f.store, "pay", usd(x, y, 1_00)) }()
	time.Sleep(300 * time.Millisecond) // the transfer waits for x's lock
	if err := unfreeze.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	tx := <-paid
	if tx == (ledger.TransactionID{}) {
		t.Fatal("the transfer from the unfrozen account was refused")
	}
	f.relay("one", prometheus.NewRegistry())
	_, all := f.committed()
	var unfrozen, transfer int64
	for _, e := range distinct(t, f.consume(time.Minute, haveSequences(all))) {
		if e.Type == "account.unfrozen" {
			unfrozen = e.Sequence
		}
		if e.Type == "transaction.committed" && eventstest.TransactionIDs(t, []events.Event{e})[tx.String()] {
			transfer = e.Sequence
		}
	}
	if unfrozen == 0 || transfer <= unfrozen {
		t.Fatalf("the unfreezing is event %d, the transfer that waited for it is event %d", unfrozen, transfer)
	}
}

// TestEventsWaitWhileKafkaIsAway stops the broker mid-stream: the relay backs off, the
// events wait in PostgreSQL (lag, backlog and errors rise), and once Kafka is back every
// event arrives, in order, none lost.
func TestEventsWaitWhileKafkaIsAway(t *testing.T) {
	dir := t.TempDir()
	f := newFixture(t, kfake.DataDir(dir), kfake.SyncWrites())
	a, b := f.account("a"), f.account("b")
	f.post(f.store, "fund", usd(f.external, a, 1_000_00))
	reg := prometheus.NewRegistry()
	f.relay("one", reg)
	for i := range 10 {
		f.post(f.store, fmt.Sprint("before-", i), usd(a, b, 1))
	}
	_, all := f.committed()
	f.consume(time.Minute, haveSequences(all))

	port := f.addrs[0][len("127.0.0.1:"):]
	f.kafka.Close()
	for i := range 20 {
		f.post(f.store, fmt.Sprint("away-", i), usd(a, b, 1))
	}
	eventually(t, 2*time.Minute, "the relay to count failed rounds and a backlog", func() bool {
		return metric(t, reg, "tally_events_publish_errors_total") > 0 && metric(t, reg, "tally_events_backlog") >= 20 &&
			metric(t, reg, "tally_events_lag_seconds") > 0
	})
	if n := f.outboxRows(); n < 20 {
		t.Fatalf("%d rows wait in the outbox while Kafka is away, want at least 20", n)
	}
	var p int
	fmt.Sscan(port, &p)
	f.startKafka(kfake.DataDir(dir), kfake.SyncWrites(), kfake.Ports(p))
	_, all = f.committed()
	got := distinct(t, f.consume(2*time.Minute, haveSequences(all)))
	if len(got) != all {
		t.Fatalf("%d events, %d committed", len(got), all)
	}
	eventually(t, time.Minute, "the backlog to drain", func() bool {
		return metric(t, reg, "tally_events_backlog") == 0 && metric(t, reg, "tally_events_lag_seconds") == 0 && f.outboxRows() == 0
	})
}

// consumeRaw reads the first n records of the topic as Kafka holds them.
func (f *fixture) consumeRaw(n int) []*kgo.Record {
	f.t.Helper()
	c, err := kgo.NewClient(kgo.SeedBrokers(f.addrs...), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		f.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n && ctx.Err() == nil {
		c.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			out = append(out, &kgo.Record{Topic: r.Topic, Key: r.Key, Value: r.Value, Headers: r.Headers, Partition: r.Partition})
		})
	}
	return out
}
