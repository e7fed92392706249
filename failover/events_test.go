package failover_test

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/internal/eventstest"
	"github.com/tallyhq/tally/ledger/events"
	"github.com/tallyhq/tally/ledger/migrations"
)

// TestEventsFollowAFailover relays a shard's events while its primary is killed under
// load: the relay follows the shard to the promoted replica, and a consumer finds every
// acknowledged transfer, no gap, and no transaction the journal does not hold.
func TestEventsFollowAFailover(t *testing.T) {
	h := startHALedger(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, h.shard.DSN("postgres", database))
	if err != nil {
		t.Fatal(err)
	}
	if err := migrations.GrantRelay(ctx, conn, "relayer", "relayer-password"); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	kafka, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "tally.events"))
	if err != nil {
		t.Fatal(err)
	}
	defer kafka.Close()
	producer, err := events.NewProducer(events.Kafka{Brokers: kafka.ListenAddrs()})
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	relayCtx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan struct{})
	go func() {
		defer close(relayDone)
		_ = events.Run(relayCtx, events.Config{DSN: h.shard.DSN("relayer", database) + "&password=relayer-password&connect_timeout=2",
			Client: producer, Topic: "tally.events", Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	}()
	defer func() { stopRelay(); <-relayDone }()

	l := h.startLoad(4)
	time.Sleep(2 * time.Second)
	old := h.shard.CurrentPrimary()
	h.shard.Kill(old)
	l.markFault()
	primary := waitPrimaryOtherThan(t, h.shard, old, time.Minute)
	l.waitForWriteAfterFault(t, time.Minute)
	time.Sleep(time.Second)
	acked := l.finish()

	conn, err = pgx.Connect(ctx, h.shard.InstanceDSN(primary, "postgres", database))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var ackedIDs, journal []string
	var all int
	err = conn.QueryRow(ctx, `SELECT
		(SELECT array_agg(transaction_id::text) FROM tally.idempotency_keys WHERE caller = 'ha' AND key = ANY($1) AND status = 201),
		(SELECT array_agg(id::text) FROM tally.transactions),
		(SELECT published FROM tally.outbox_progress) + (SELECT count(*) FROM tally.outbox)`, acked).
		Scan(&ackedIDs, &journal, &all)
	if err != nil {
		t.Fatal(err)
	}
	if len(ackedIDs) != len(acked) {
		t.Fatalf("%d of %d acknowledged transfers on the new primary", len(ackedIDs), len(acked))
	}
	got := eventstest.Consume(t, kafka.ListenAddrs(), "tally.events", 2*time.Minute, eventstest.HaveSequences(all))
	published := eventstest.TransactionIDs(t, eventstest.Distinct(t, got))
	for _, id := range ackedIDs {
		if !published[id] {
			t.Errorf("acknowledged transaction %s has no event", id)
		}
	}
	inJournal := map[string]bool{}
	for _, id := range journal {
		inJournal[id] = true
	}
	for id := range published {
		if !inJournal[id] {
			t.Errorf("an event of transaction %s, which the new primary's journal does not hold", id)
		}
	}
	t.Logf("%d acknowledged transfers, %d transactions published in %d records across the failover from %s to %s",
		len(acked), len(published), len(got), old, primary)
}
