package store_test

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// cuttingProxy forwards connections to PostgreSQL; once armed, it lets the next statement
// through and commit, then closes the client's connection before the client learns that,
// as a network that fails at the moment of commit would.
type cuttingProxy struct {
	ln     net.Listener
	target string
	armed  atomic.Bool
	cut    atomic.Bool
	wg     sync.WaitGroup
}

func newCuttingProxy(t *testing.T, target string) *cuttingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttingProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.wg.Wait() })
	return p
}

func (p *cuttingProxy) serve() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		p.wg.Add(2)
		go func() { defer p.wg.Done(); _, _ = io.Copy(server, client); server.Close() }()
		go func() {
			defer p.wg.Done()
			defer client.Close()
			p.forward(client, server)
		}()
	}
}

// forward copies the server's messages to the client. Once armed (between queries, so at
// a message boundary), it reads whole protocol messages (a type byte and a length), and
// when the ReadyForQuery that follows a CommandComplete arrives, so the statement's
// implicit transaction has committed, it closes the client's connection instead.
func (p *cuttingProxy) forward(client, server net.Conn) {
	buf := make([]byte, 64<<10)
	var pending []byte
	completed := false
	for {
		n, err := server.Read(buf)
		if n > 0 && !p.armed.Load() {
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		} else if n > 0 {
			pending = append(pending, buf[:n]...)
			for len(pending) >= 5 {
				size := 1 + int(binary.BigEndian.Uint32(pending[1:5]))
				if len(pending) < size {
					break
				}
				switch pending[0] {
				case 'C':
					completed = true
				case 'Z':
					if completed && p.cut.CompareAndSwap(false, true) {
						return // committed; the answer is lost on the way
					}
				}
				if _, werr := client.Write(pending[:size]); werr != nil {
					return
				}
				pending = pending[size:]
			}
		}
		if err != nil {
			return
		}
	}
}

// A connection that breaks after the server committed is not "nothing applied": the
// error says the outcome is unknown (503, retry with the same key), the transfer is in
// the journal, and the replay under the same key answers its outcome without applying
// it again.
func TestConnectionCutAtCommitIsAmbiguous(t *testing.T) {
	f := newFixture(t, 4)
	a := f.account("a", 0)
	dsn := f.db.AppDSN()
	host := dsn[strings.Index(dsn, "@")+1:]
	host = host[:strings.Index(host, "/")]
	proxy := newCuttingProxy(t, host)
	cfg, err := pgxpool.ParseConfig(strings.Replace(dsn, host, proxy.ln.Addr().String(), 1))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1
	store.ConfigurePool(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	through := store.New(pool)
	if err := through.Ping(context.Background()); err != nil { // the connection is up before the cut
		t.Fatal(err)
	}
	req := request(t, "cut", usd(f.external, a, 42))
	proxy.armed.Store(true)
	_, err = through.PostTransaction(context.Background(), req)
	if !proxy.cut.Load() {
		t.Fatal("the proxy never cut the connection")
	}
	var le *ledger.Error
	if ledger.CodeOf(err) != ledger.CodeUnavailable || !errorsAs(err, &le) || !strings.Contains(le.Detail, "may or may not have been applied") {
		t.Fatalf("after a cut at commit: %v; want unavailable saying the outcome is unknown", err)
	}
	if f.balance(a) != 42 {
		t.Fatalf("balance %d: the server committed, so the transfer is there", f.balance(a))
	}
	out, err := f.store.PostTransaction(context.Background(), req)
	if err != nil || out.Status != 201 || !out.Replayed {
		t.Fatalf("replay: %v %+v", err, out)
	}
	if f.balance(a) != 42 {
		t.Errorf("balance %d after the replay", f.balance(a))
	}
}

// PostgreSQL answers a cancel during a commit's wait for its synchronous standbys with a
// WARNING and a success, though the commit may be on the primary alone. The store must
// not acknowledge it: the request gets a 503, and its replay with the same key answers
// only once the standbys have it.
func TestCancelledSyncRepWaitIsNotAcknowledged(t *testing.T) {
	f := newFixture(t, 4)
	a := f.account("a", 0)
	ctx := context.Background()
	super := f.db.SuperConn(t)
	// The standby "ghost" never connects: every commit waits for it until cancelled.
	setStandbys := func(names string) {
		t.Helper()
		if _, err := super.Exec(ctx, "ALTER SYSTEM SET synchronous_standby_names = '"+names+"'"); err != nil {
			t.Fatal(err)
		}
		if _, err := super.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
			t.Fatal(err)
		}
	}
	setStandbys("ghost")
	t.Cleanup(func() {
		_, _ = super.Exec(ctx, "ALTER SYSTEM RESET synchronous_standby_names")
		_, _ = super.Exec(ctx, "SELECT pg_reload_conf()")
	})
	// A new connection reads the reloaded configuration; wait until one sees it.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		var v string
		if err := f.db.SuperConn(t).QueryRow(ctx, "SHOW synchronous_standby_names").Scan(&v); err != nil {
			t.Fatal(err)
		}
		if v == "ghost" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("synchronous_standby_names never took effect")
		}
	}
	waiting := store.New(f.db.AppPool(t, 1)) // a fresh pool: its connection has the setting
	req := request(t, "syncrep", usd(f.external, a, 7))
	type result struct {
		out ledger.Outcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := waiting.PostTransaction(ctx, req)
		done <- result{out, err}
	}()
	var pid int
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
		err := super.QueryRow(ctx, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'SyncRep'").Scan(&pid)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no backend waits for the synchronous standby: %v", err)
		}
	}
	if _, err := super.Exec(ctx, "SELECT pg_cancel_backend($1)", pid); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if ledger.CodeOf(r.err) != ledger.CodeUnavailable {
		t.Fatalf("cancelled wait for the standbys answered %v %+v; want unavailable, not an acknowledgement", r.err, r.out)
	}
	var onPrimary bool
	if err := super.QueryRow(ctx, "SELECT EXISTS (SELECT FROM tally.transactions WHERE id = $1)", [16]byte(req.Transaction.ID)).Scan(&onPrimary); err != nil || !onPrimary {
		t.Fatalf("the commit should be on the primary (that is the hazard): %v %v", onPrimary, err)
	}
	// The standby arrives (here: the wait is no longer required); the replay answers.
	setStandbys("")
	replayer := store.New(f.db.AppPool(t, 1))
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := replayer.PostTransaction(rctx, req)
		cancel()
		if err == nil && out.Status == 201 && out.Replayed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replay: %v %+v", err, out)
		}
	}
	if f.balance(a) != 7 {
		t.Errorf("balance %d", f.balance(a))
	}
}

// A connection to a server that accepts and never answers (a hung primary still behind
// its Service) gives up after ConnectTimeout, not when its caller's deadline runs out.
func TestConnectToSilentServerTimesOut(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		var held []net.Conn // accepted, never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	cfg, err := pgxpool.ParseConfig("postgres://tally@" + ln.Addr().String() + "/tally?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	store.ConfigurePool(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pool.Ping(ctx); err == nil || ctx.Err() != nil {
		t.Fatalf("ping of a silent server: %v (caller's context: %v), want a connect timeout", err, ctx.Err())
	}
}

// TestSlowLoginStillConnects: a login that takes seconds, as each of a burst of them does
// on a busy server (64 at once took 1.7 s on a quiet 2-core machine: the pool opening, or
// reopening after a failover), must still connect. The connect timeout is for servers that
// never answer, not for slow ones.
func TestSlowLoginStillConnects(t *testing.T) {
	target := pgtest.Server(t).DSN("postgres")
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	server := u.Host
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var handlers sync.WaitGroup
	accepting := make(chan struct{})
	defer func() { ln.Close(); <-accepting; handlers.Wait() }()
	go func() {
		defer close(accepting)
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			handlers.Go(func() {
				defer client.Close()
				time.Sleep(2500 * time.Millisecond) // the server is slow to take the login
				conn, err := net.Dial("tcp", server)
				if err != nil {
					return
				}
				defer conn.Close()
				go func() { _, _ = io.Copy(conn, client); conn.Close() }()
				_, _ = io.Copy(client, conn)
			})
		}
	}()
	u.Host = ln.Addr().String()
	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Fatal(err)
	}
	store.ConfigurePool(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("a login that took 2.5 s: %v", err)
	}
}
