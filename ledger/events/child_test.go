package events_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tallyhq/tally/ledger/events"
)

// childEnv, set to a shard's relay DSN, makes the test binary a relay process (with the
// brokers in childEnv_BROKERS) that tests can kill -9 or stop.
const childEnv = "TALLY_EVENTS_TEST_RELAY"

func runChild() int {
	producer, err := events.NewProducer(events.Kafka{Brokers: strings.Split(os.Getenv(childEnv+"_BROKERS"), ",")})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	err = events.Run(ctx, events.Config{DSN: os.Getenv(childEnv), Client: producer, Topic: topic,
		Batch: 50, Log: slog.New(slog.NewTextHandler(os.Stderr, nil))})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
