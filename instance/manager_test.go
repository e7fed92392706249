package instance

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/internal/postgres"
)

// switchLocator is a Locator a test steers: a target, or an error.
type switchLocator struct {
	mu     sync.Mutex
	target string
	err    error
}

func (l *switchLocator) TargetPrimary(context.Context) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.target, l.err
}

func (l *switchLocator) set(target string, err error) {
	l.mu.Lock()
	l.target, l.err = target, err
	l.mu.Unlock()
}

// startSolo runs a one-member shard's manager ("a") with a dead peer "b", so nobody
// answers its isolation checks but its locator.
func startSolo(t *testing.T, loc Locator) (*Manager, *httptest.Server) {
	return startManager(t, loc, true)
}

// startManager runs manager "a", with or without its dead peer "b".
func startManager(t *testing.T, loc Locator, withPeer bool) (*Manager, *httptest.Server) {
	t.Helper()
	return startManagerWith(t, loc, withPeer, func(*Config) {})
}

// startManagerWith is startManager with its Config changed by change.
func startManagerWith(t *testing.T, loc Locator, withPeer bool, change func(*Config)) (*Manager, *httptest.Server) {
	t.Helper()
	dir, err := os.MkdirTemp("", "tally-instance-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	port, err := postgres.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	deadPort, _ := postgres.FreePort()
	members := []Member{{Name: "a", Host: "127.0.0.1", Port: port}}
	if withPeer {
		members = append(members, Member{Name: "b", Host: "127.0.0.1", Port: deadPort, StatusURL: "http://127.0.0.1:" + strconv.Itoa(deadPort)})
	}
	cfg := Config{
		Name: "a", DataDir: filepath.Join(dir, "pgdata"), Port: port, Token: "s3cret", Locator: loc,
		Members: members,
		Sync:    SyncRule{Method: SyncAny, Number: 1}, Tick: 100 * time.Millisecond, IsolationTimeout: time.Second,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	change(&cfg)
	m, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	return m, srv
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestStatusAPIRequiresToken(t *testing.T) {
	loc := &switchLocator{target: "a"}
	m, srv := startSolo(t, loc)
	ctx := context.Background()
	waitFor(t, "a primary", time.Minute, func() bool { return m.Status(ctx).Role == RolePrimary })

	for _, path := range []string{PathStatus} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d", path, resp.StatusCode)
		}
	}
	for _, path := range []string{PathPromote, PathFence, PathUnfence, PathFollow, PathDemote, PathDetach} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+path, strings.NewReader(`{"primary":"b"}`))
		req.Header.Set("Authorization", "Bearer wrong")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("POST %s with a wrong token: %d", path, resp.StatusCode)
		}
	}
	for _, path := range []string{PathHealthz, PathReadyz} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %d", path, resp.StatusCode)
		}
	}
	c := NewClient(srv.URL, "s3cret", nil)
	st, err := c.Status(ctx)
	if err != nil || st.Role != RolePrimary || st.Timeline != 1 || st.WAL == 0 {
		t.Fatalf("status: %+v %v", st, err)
	}
	if err := c.Follow(ctx, "a"); err == nil {
		t.Error("following itself: want an error")
	}
	if err := c.Follow(ctx, "nobody"); err == nil {
		t.Error("following a stranger: want an error")
	}
	req, _ := http.NewRequest(http.MethodPost, srv.URL+PathFollow, strings.NewReader(`{"primary":"b","extra":1}`))
	req.Header.Set("Authorization", "Bearer s3cret")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("follow with an unknown field: %d", resp.StatusCode)
	}
	if _, err := New(Config{Name: "a", DataDir: "/x", Port: 1, Locator: loc, Members: []Member{{Name: "a"}}}); err == nil {
		t.Error("a manager without a token: want an error")
	}
}

// An isolated primary fences itself and comes back when it can see its locator again.
func TestIsolatedPrimaryFencesItself(t *testing.T) {
	loc := &switchLocator{target: "a"}
	m, _ := startSolo(t, loc)
	ctx := context.Background()
	waitFor(t, "a primary", time.Minute, func() bool { return m.Status(ctx).Role == RolePrimary })
	loc.set("", errors.New("api server unreachable"))
	waitFor(t, "self-fencing", 10*time.Second, func() bool { return !m.Status(ctx).Running })
	time.Sleep(500 * time.Millisecond)
	if m.Status(ctx).Running {
		t.Fatal("restarted while still isolated")
	}
	loc.set("a", nil)
	waitFor(t, "the primary back", time.Minute, func() bool { return m.Status(ctx).Role == RolePrimary })
}

// A shard of one has nobody to take over: losing the locator must not take it down.
func TestLonePrimaryStaysUpWithoutLocator(t *testing.T) {
	loc := &switchLocator{target: "a"}
	m, _ := startManager(t, loc, false)
	ctx := context.Background()
	waitFor(t, "a primary", time.Minute, func() bool { return m.Status(ctx).Role == RolePrimary })
	loc.set("", errors.New("api server unreachable"))
	time.Sleep(2 * time.Second) // twice the isolation timeout
	if st := m.Status(ctx); !st.Running || st.Role != RolePrimary {
		t.Fatalf("a lone primary fenced itself: %+v", st)
	}
}

// With LogicalDecoding the server decodes logically; PrimarySetup is tried on the
// primary each tick until it succeeds, then not again.
func TestPrimarySetupRunsUntilItSucceeds(t *testing.T) {
	var mu sync.Mutex
	calls, failures := 0, 3
	var walLevel string
	m, _ := startManagerWith(t, &switchLocator{target: "a"}, false, func(c *Config) {
		c.LogicalDecoding = true
		c.Bootstrap.Database = "postgres"
		c.PrimarySetup = func(ctx context.Context, conn *pgx.Conn) error {
			mu.Lock()
			defer mu.Unlock()
			calls++
			if calls <= failures {
				return errors.New("the schema is not there yet")
			}
			return conn.QueryRow(ctx, "SHOW wal_level").Scan(&walLevel)
		}
	})
	ctx := context.Background()
	waitFor(t, "a primary", time.Minute, func() bool { return m.Status(ctx).Role == RolePrimary })
	waitFor(t, "the setup to succeed", time.Minute, func() bool { mu.Lock(); defer mu.Unlock(); return walLevel != "" })
	time.Sleep(time.Second) // ten ticks
	mu.Lock()
	defer mu.Unlock()
	if walLevel != "logical" || calls != failures+1 {
		t.Fatalf("wal_level %q, setup called %d times, want %d", walLevel, calls, failures+1)
	}
}

// A primary that learns another instance holds the role stops taking writes at once.
func TestPrimaryStepsDownWhenRoleMoves(t *testing.T) {
	loc := &switchLocator{target: "a"}
	m, _ := startSolo(t, loc)
	ctx := context.Background()
	waitFor(t, "a primary", time.Minute, func() bool { return m.Status(ctx).Role == RolePrimary })
	loc.set("b", nil)
	waitFor(t, "stepping down", 10*time.Second, func() bool { return !m.Status(ctx).Running })
	// b does not exist, so a cannot rewind against it: it must stay down, not start as primary.
	time.Sleep(time.Second)
	if st := m.Status(ctx); st.Running {
		t.Fatalf("running again: %+v", st)
	}
}

// A fenced instance stays down across a restart of its manager, until unfenced.
func TestFenceSurvivesRestart(t *testing.T) {
	loc := &switchLocator{target: "a"}
	m, _ := startSolo(t, loc)
	ctx := context.Background()
	waitFor(t, "a primary", time.Minute, func() bool { return m.Status(ctx).Role == RolePrimary })
	if err := m.Fence(ctx); err != nil {
		t.Fatal(err)
	}
	if st := m.Status(ctx); st.Running || !st.Fenced {
		t.Fatalf("after fence: %+v", st)
	}
	if err := m.Promote(ctx); err == nil {
		t.Fatal("promoting a fenced instance: want an error")
	}
	m2, err := New(m.cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.Kill()
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = m2.Run(rctx) }()
	defer func() { cancel(); <-done }()
	time.Sleep(500 * time.Millisecond)
	if st := m2.Status(ctx); st.Running || !st.Fenced {
		t.Fatalf("fence forgotten across a restart: %+v", st)
	}
	if err := m2.Unfence(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the primary back", time.Minute, func() bool { return m2.Status(ctx).Role == RolePrimary })
}

// Members and rule change while the primary runs: synchronous_standby_names follows.
func TestSetShapeRewritesSyncStandbys(t *testing.T) {
	loc := &switchLocator{target: "a"}
	m, _ := startSolo(t, loc)
	ctx := context.Background()
	waitFor(t, "a primary", time.Minute, func() bool { return m.Status(ctx).Role == RolePrimary })
	if got := m.Status(ctx).SyncStandbyNames; got != "" {
		t.Fatalf("preferred with nothing streaming: %q", got)
	}
	members, _, _ := m.shape()
	grown := append(slices.Clone(members), Member{Name: "c", Host: "127.0.0.1", Port: 1})
	if err := m.SetShape(grown, SyncRule{Method: SyncAny, Number: 1, Required: true}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new synchronous standbys", 10*time.Second, func() bool {
		return m.Status(ctx).SyncStandbyNames == `ANY 1 ("b", "c")`
	})
	if err := m.SetShape(grown[1:], SyncRule{}); err == nil {
		t.Fatal("a shape without this instance: want an error")
	}
}
