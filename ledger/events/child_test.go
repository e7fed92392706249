package events_test

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"

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

// child is a relay process.
type child struct {
	cmd    *exec.Cmd
	turned chan struct{} // closed when it says it has the turn
	mu     sync.Mutex
	log    strings.Builder
}

// startChild starts a relay process for the fixture's shard 0.
func startChild(t *testing.T, f *fixture, name string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+f.db.RelayDSN(), childEnv+"_BROKERS="+strings.Join(f.addrs, ","))
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, turned: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s := bufio.NewScanner(stderr)
		var once sync.Once
		for s.Scan() {
			c.mu.Lock()
			fmt.Fprintf(&c.log, "%s: %s\n", name, s.Text())
			c.mu.Unlock()
			if strings.Contains(s.Text(), "has the turn") {
				once.Do(func() { close(c.turned) })
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		c.mu.Lock()
		defer c.mu.Unlock()
		t.Log(c.log.String())
	})
	return c
}

// hasTurn reports whether the child said it has the turn.
func (c *child) hasTurn() bool {
	select {
	case <-c.turned:
		return true
	default:
		return false
	}
}
