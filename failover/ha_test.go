package failover_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/failover"
	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/localshard"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/store"
)

const (
	appUser  = "tally_service"
	database = "tally"
	accounts = 20
)

var anyOneRequired = instance.SyncRule{Method: instance.SyncAny, Number: 1, Required: true}

// haLedger is a local three-instance shard with the ledger schema and funded accounts.
type haLedger struct {
	t        *testing.T
	index    int // the ledger shard it is
	shard    *localshard.Shard
	pool     *pgxpool.Pool
	store    *store.Store
	external ledger.AccountID
	accounts []ledger.AccountID
	log      string // the instance managers' log file
}

func startHALedger(t *testing.T) *haLedger {
	t.Helper()
	return startHALedgerOf(t, 3, anyOneRequired)
}

// startHALedgerOf is startHALedger with another number of instances and rule.
func startHALedgerOf(t *testing.T, instances int, rule instance.SyncRule) *haLedger {
	t.Helper()
	return startHALedgerWith(t, instances, rule, time.Second)
}

// startHALedgerWith is startHALedgerOf with another failover delay.
func startHALedgerWith(t *testing.T, instances int, rule instance.SyncRule, failoverDelay time.Duration) *haLedger {
	t.Helper()
	return startHALedgerShard(t, 0, instances, rule, failoverDelay)
}

// startHALedgerShard is startHALedgerWith for the ledger's shard with the given index.
func startHALedgerShard(t *testing.T, index, instances int, rule instance.SyncRule, failoverDelay time.Duration) *haLedger {
	t.Helper()
	return startHALedgerTLS(t, index, instances, rule, failoverDelay, nil)
}

// startHALedgerTLS is startHALedgerShard whose instances serve TLS with the given
// certificate (nil: none), and whose clients verify it.
func startHALedgerTLS(t *testing.T, index, instances int, rule instance.SyncRule, failoverDelay time.Duration, tlsFiles *instance.TLS) *haLedger {
	t.Helper()
	dir, err := os.MkdirTemp("", "tally-ha-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if os.Getenv("TALLY_KEEP_HA") == "" {
			os.RemoveAll(dir)
		} else {
			t.Logf("kept %s", dir)
		}
	})
	ctx := context.Background()
	logFile, err := os.Create(dir + "/managers.log")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("instance manager log:\n%s", b)
		}
	})
	sh, err := localshard.Start(ctx, localshard.Config{
		Log: slog.New(slog.NewTextHandler(logFile, nil)),
		Dir: dir, Instances: instances, Sync: rule, FailoverDelay: failoverDelay, Tick: 200 * time.Millisecond,
		Bootstrap: instance.Bootstrap{Database: database, AppUser: appUser}, TLS: tlsFiles,
		Event: func(e failover.Event) { t.Logf("event %s: %s", e.Reason, e.Message) },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sh.Stop)
	conn, err := pgx.Connect(ctx, sh.DSN("postgres", database))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := migrations.Setup(ctx, conn, index, appUser); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	cfg, err := pgxpool.ParseConfig(sh.DSN(appUser, database) + "&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	store.ConfigurePool(cfg)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	h := &haLedger{t: t, index: index, shard: sh, pool: pool, store: store.New(pool), log: logFile.Name()}
	extID, _ := ledger.NewAccountID(index)
	if _, h.external, _, err = h.store.RegisterAsset(ctx, "USD", 2, extID); err != nil {
		t.Fatal(err)
	}
	for i := range accounts {
		id, err := ledger.NewAccountID(index)
		if err != nil {
			t.Fatal(err)
		}
		a, err := h.store.CreateAccount(ctx, ledger.Account{ID: id, Owner: fmt.Sprintf("owner-%d", i), Asset: "USD"})
		if err != nil {
			t.Fatal(err)
		}
		h.accounts = append(h.accounts, a.ID)
		if out, err := h.post(ctx, fmt.Sprintf("seed-%d", i), h.external, a.ID, 1_000_000); err != nil || out.Status != 201 {
			t.Fatalf("seed: %v %s", err, out.Body)
		}
	}
	return h
}

func (h *haLedger) post(ctx context.Context, key string, from, to ledger.AccountID, amount int64) (ledger.Outcome, error) {
	p := ledger.Posting{From: from, To: to, Amount: amount, Asset: "USD"}
	id, err := ledger.NewTransactionID(h.index)
	if err != nil {
		return ledger.Outcome{}, err
	}
	return h.store.PostTransaction(ctx, store.Request{
		Caller: "ha", Key: key, Hash: sha256.Sum256([]byte(fmt.Sprint(p))),
		Transaction: ledger.Transaction{ID: id, Postings: []ledger.Posting{p}, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)},
		Body:        []byte(`{"id":"` + id.String() + `"}`),
	})
}

// load posts random transfers from workers until stopped and records every
// acknowledged one.
type load struct {
	mu        sync.Mutex
	acked     []string // idempotency keys of transfers acknowledged with 201
	ackedAt   []time.Time
	failed    atomic.Int64
	lastError atomic.Value
	firstOK   atomic.Int64 // unix nanos of the first acknowledgement after mark
	mark      atomic.Int64
	stop      chan struct{}
	wg        sync.WaitGroup
}

func (h *haLedger) startLoad(workers int) *load {
	l := &load{stop: make(chan struct{})}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for n := 0; ; n++ {
				select {
				case <-l.stop:
					return
				default:
				}
				a, b := rng.IntN(accounts), rng.IntN(accounts-1)
				if b >= a {
					b++
				}
				key := fmt.Sprintf("w%d-%d", w, n)
				sent := time.Now().UnixNano()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				out, err := h.post(ctx, key, h.accounts[a], h.accounts[b], 1+rng.Int64N(100))
				cancel()
				if err != nil || out.Status != 201 {
					l.failed.Add(1)
					if err != nil {
						l.lastError.Store(err.Error())
					}
					time.Sleep(20 * time.Millisecond)
					continue
				}
				if m := l.mark.Load(); m != 0 && sent > m {
					l.firstOK.CompareAndSwap(0, time.Now().UnixNano())
				}
				l.mu.Lock()
				l.acked = append(l.acked, key)
				l.ackedAt = append(l.ackedAt, time.Now())
				l.mu.Unlock()
			}
		}()
	}
	return l
}

// markFault notes the moment of a fault; firstOK then records the first write after it.
func (l *load) markFault() time.Time {
	now := time.Now()
	l.firstOK.Store(0)
	l.mark.Store(now.UnixNano())
	return now
}

func (l *load) waitForWriteAfterFault(t *testing.T, timeout time.Duration) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ns := l.firstOK.Load(); ns != 0 {
			return time.Unix(0, ns)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no write succeeded within %s of the fault (last error: %v)", timeout, l.lastError.Load())
	return time.Time{}
}

func (l *load) finish() []string {
	close(l.stop)
	l.wg.Wait()
	return l.acked
}

// longestPause is the longest time between two acknowledgements: how long writes
// stopped while the primary changed.
func (l *load) longestPause() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	times := slices.SortedFunc(slices.Values(l.ackedAt), time.Time.Compare)
	var longest time.Duration
	for i := 1; i < len(times); i++ {
		longest = max(longest, times[i].Sub(times[i-1]))
	}
	return longest
}

// checkLedger asserts that every acknowledged transfer is on the given instance, that
// money is conserved and that every invariant holds.
func (h *haLedger) checkLedger(ctx context.Context, name string, acked []string) {
	h.t.Helper()
	conn, err := pgx.Connect(ctx, h.shard.InstanceDSN(name, "postgres", database))
	if err != nil {
		h.t.Fatal(err)
	}
	defer conn.Close(ctx)
	// A replica may still be replaying the last commits it received.
	var found int
	for deadline := time.Now().Add(10 * time.Second); ; {
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM tally.idempotency_keys WHERE caller = 'ha' AND key = ANY($1) AND status = 201", acked).Scan(&found); err != nil {
			h.t.Fatal(err)
		}
		if found == len(acked) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if found != len(acked) {
		obs, _ := json.Marshal(h.shard.Observe(ctx))
		h.t.Errorf("%s holds %d of %d acknowledged transfers; shard: %s", name, found, len(acked), obs)
	}
	var total int64
	if err := conn.QueryRow(ctx, "SELECT COALESCE(sum(posted), 0) FROM tally.balances").Scan(&total); err != nil {
		h.t.Fatal(err)
	}
	if total != 0 {
		h.t.Errorf("%s: balances sum to %d, not 0: money was created or destroyed", name, total)
	}
	pool, err := pgxpool.New(ctx, h.shard.InstanceDSN(name, "postgres", database))
	if err != nil {
		h.t.Fatal(err)
	}
	defer pool.Close()
	violations, err := store.New(pool).Verify(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for _, v := range violations {
		h.t.Errorf("%s: invariant broken: %s", name, v)
	}
}

// replicas lists the instances other than primary, in order.
func (h *haLedger) replicas(primary string) []string {
	var names []string
	for _, m := range h.shard.Members() {
		if m.Name != primary {
			names = append(names, m.Name)
		}
	}
	return names
}

func waitPrimaryOtherThan(t *testing.T, sh *localshard.Shard, old string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p := sh.CurrentPrimary(); p != "" && p != old {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no new primary within %s", timeout)
	return ""
}

// TestKillPrimaryUnderLoad kills the primary with SIGKILL while transfers run, and
// checks that a synchronous replica took over with every acknowledged transfer, that
// the ledger balances, and that the old primary rejoins as a replica via pg_rewind.
func TestKillPrimaryUnderLoad(t *testing.T) {
	h := startHALedger(t)
	ctx := context.Background()
	l := h.startLoad(8)
	time.Sleep(2 * time.Second)
	old := h.shard.CurrentPrimary()
	h.shard.Kill(old)
	killed := l.markFault()
	newPrimary := waitPrimaryOtherThan(t, h.shard, old, time.Minute)
	firstWrite := l.waitForWriteAfterFault(t, time.Minute)
	time.Sleep(time.Second)
	acked := l.finish()
	t.Logf("failover: kill -9 of %s to first acknowledged write on %s: %s; longest pause in acknowledged writes %s (%d transfers acknowledged, %d failed)",
		old, newPrimary, firstWrite.Sub(killed).Round(time.Millisecond), l.longestPause().Round(time.Millisecond), len(acked), l.failed.Load())
	if len(acked) == 0 {
		t.Fatal("no transfer was acknowledged")
	}
	h.checkLedger(ctx, newPrimary, acked)

	if err := h.shard.Restart(old); err != nil {
		t.Fatal(err)
	}
	if err := h.shard.WaitReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	st, err := h.shard.Client(old).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != instance.RoleReplica || st.Upstream != newPrimary {
		t.Fatalf("old primary did not rejoin as a replica of %s: %+v", newPrimary, st)
	}
	h.checkLedger(ctx, old, acked)
}

// TestHungPrimaryUnderLoad freezes every process of the primary (SIGSTOP; its
// connections stay open and its status API answers nothing) while transfers run. The
// replicas' connections to it go silent rather than closed, so this is the case where a
// failover waited a minute for PostgreSQL's default wal_receiver_timeout: now the
// replicas drop the silent primary within seconds, are detached, and one is promoted.
// When the old primary wakes up it must not acknowledge anything, and it rejoins as a
// replica.
func TestHungPrimaryUnderLoad(t *testing.T) {
	h := startHALedger(t)
	ctx := context.Background()
	l := h.startLoad(8)
	time.Sleep(2 * time.Second)
	old := h.shard.CurrentPrimary()
	if err := h.shard.Freeze(old); err != nil {
		t.Fatal(err)
	}
	frozen := l.markFault()
	thawed := false
	defer func() {
		if !thawed {
			_ = h.shard.Thaw(old)
		}
	}()
	// Well inside PostgreSQL's default 60 s receiver timeout, and loose enough for a
	// slow machine: the failover itself takes a few seconds here.
	newPrimary := waitPrimaryOtherThan(t, h.shard, old, 45*time.Second)
	firstWrite := l.waitForWriteAfterFault(t, time.Minute)
	if err := h.shard.Thaw(old); err != nil {
		t.Fatal(err)
	}
	thawed = true
	time.Sleep(time.Second)
	acked := l.finish()
	t.Logf("failover: SIGSTOP of %s to first acknowledged write on %s: %s; longest pause in acknowledged writes %s (%d transfers acknowledged, %d failed)",
		old, newPrimary, firstWrite.Sub(frozen).Round(time.Millisecond), l.longestPause().Round(time.Millisecond), len(acked), l.failed.Load())
	h.checkLedger(ctx, newPrimary, acked)
	if err := h.shard.WaitReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	st, err := h.shard.Client(old).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != instance.RoleReplica || st.Upstream != newPrimary {
		t.Fatalf("old primary did not rejoin as a replica of %s: %+v", newPrimary, st)
	}
	h.checkLedger(ctx, old, acked)
}

// TestStandbyDetachesWhilePrimaryHangs: a standby answers a Detach at once while its
// primary hangs. Its manager's loop asks the primary whether the standby diverged, a
// question that hangs with the primary; asked under the lock every change of the
// instance takes, it held a failover's Detach (and Promote) for the question's timeout,
// and the failover gave up on the standby.
func TestStandbyDetachesWhilePrimaryHangs(t *testing.T) {
	h := startHALedgerWith(t, 3, anyOneRequired, time.Hour) // no failover of its own
	ctx := context.Background()
	old := h.shard.CurrentPrimary()
	if err := h.shard.Freeze(old); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = h.shard.Thaw(old) }()
	standby := h.replicas(old)[0]
	deadline := time.Now().Add(time.Minute)
	for {
		st, err := h.shard.Client(standby).Status(ctx)
		if err == nil && st.WALReceiver != "streaming" {
			break // its receiver gave up on the silent primary; the loop now asks it
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still streams from the frozen %s: %+v %v", standby, old, st, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i := range 5 {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := h.shard.Client(standby).Detach(dctx)
		cancel()
		if err != nil {
			t.Fatalf("detach %d of %s while %s hangs: %v", i+1, standby, old, err)
		}
		time.Sleep(time.Second) // its loop follows the frozen primary again, and asks it
	}
}

// TestStaleReplicaNeverPromoted: a replica that was down while transfers were
// acknowledged must not become primary. With one synchronous standby required of two,
// a failover waits until both answer, and then takes the one that is ahead.
func TestStaleReplicaNeverPromoted(t *testing.T) {
	h := startHALedger(t)
	ctx := context.Background()
	primary := h.shard.CurrentPrimary()
	replicas := h.replicas(primary)
	stale, fresh := replicas[0], replicas[1]
	h.shard.StopInstance(stale)
	l := h.startLoad(4)
	time.Sleep(2 * time.Second)
	h.shard.Kill(primary)
	acked := l.finish()
	if len(acked) == 0 {
		t.Fatal("no transfer was acknowledged")
	}
	// Only fresh answers: one of the two synchronous standbys is missing, so nobody can
	// know that fresh holds every acknowledged commit. No failover may happen.
	time.Sleep(4 * time.Second)
	if p := h.shard.CurrentPrimary(); p == fresh || p == stale {
		t.Fatalf("%s was promoted with the synchronous quorum broken", p)
	}
	// The stale replica returns; now both answer and the one ahead must win.
	if err := h.shard.Restart(stale); err != nil {
		t.Fatal(err)
	}
	if got := waitPrimaryOtherThan(t, h.shard, primary, time.Minute); got != fresh {
		t.Fatalf("promoted %s, want %s (the replica that was ahead)", got, fresh)
	}
	h.checkLedger(ctx, fresh, acked)
}

// TestNoStandbyNoAcknowledgement: with dataDurability required and both replicas
// stopped, a transfer is not acknowledged, and neither is its replay; both are once a
// standby returns.
func TestNoStandbyNoAcknowledgement(t *testing.T) {
	h := startHALedger(t)
	ctx := context.Background()
	replicas := h.replicas(h.shard.CurrentPrimary())
	for _, r := range replicas {
		h.shard.StopInstance(r)
	}
	try := func(what string) error {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		out, err := h.post(cctx, "lonely", h.accounts[0], h.accounts[1], 5)
		if err == nil && out.Status == 201 {
			t.Fatalf("%s acknowledged with no synchronous standby", what)
		}
		return err
	}
	if err := try("a transfer"); err == nil {
		t.Fatal("want an error")
	}
	if err := try("its replay"); err == nil {
		t.Fatal("want an error")
	}
	if err := h.shard.Restart(replicas[0]); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := h.post(cctx, "lonely", h.accounts[0], h.accounts[1], 5)
	if err != nil || out.Status != 201 {
		t.Fatalf("with a standby back: %v %s", err, out.Body)
	}
}

// TestSwitchoverUnderLoad hands the primary role to a replica while transfers run and
// checks that nothing acknowledged is lost and the old primary follows the new one.
func TestSwitchoverUnderLoad(t *testing.T) {
	h := startHALedger(t)
	ctx := context.Background()
	old := h.shard.CurrentPrimary()
	target := h.shard.Members()[2].Name
	if target == old {
		target = h.shard.Members()[1].Name
	}
	l := h.startLoad(8)
	time.Sleep(2 * time.Second)
	if err := h.shard.Switchover(ctx, target); err != nil {
		t.Fatal(err)
	}
	l.markFault()
	l.waitForWriteAfterFault(t, time.Minute)
	time.Sleep(time.Second)
	acked := l.finish()
	t.Logf("switchover %s → %s: longest pause in acknowledged writes %s (%d transfers acknowledged)", old, target, l.longestPause().Round(time.Millisecond), len(acked))
	if got := h.shard.CurrentPrimary(); got != target {
		t.Fatalf("primary is %s, want %s", got, target)
	}
	h.checkLedger(ctx, target, acked)
	if err := h.shard.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	h.checkLedger(ctx, old, acked)
}

// walReceiverPID is the process of an instance's WAL receiver, once it streams.
func walReceiverPID(t *testing.T, sh *localshard.Shard, name string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, sh.InstanceDSN(name, "postgres", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(time.Minute)
	for {
		var pid int
		err := conn.QueryRow(ctx, "SELECT pid FROM pg_stat_wal_receiver WHERE status = 'streaming'").Scan(&pid)
		if err == nil {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no streaming WAL receiver: %v", name, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDivergedStandbyRejoins: with ANY 2 of three standbys, a failover needs only two
// of them, so the third may hold WAL the new primary never had (never acknowledged: it
// reached that standby alone). When it returns it must notice, rewind and stream again.
func TestDivergedStandbyRejoins(t *testing.T) {
	h := startHALedgerOf(t, 4, instance.SyncRule{Method: instance.SyncAny, Number: 2, Required: true})
	ctx := context.Background()
	primary := h.shard.CurrentPrimary()
	replicas := h.replicas(primary)
	ahead, lagging := replicas[2], replicas[:2]
	// Freeze the WAL receivers of two standbys: the next commit reaches ahead alone, so it
	// is written and shipped but never acknowledged.
	var frozen []int
	for _, r := range lagging {
		pid := walReceiverPID(t, h.shard, r)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		frozen = append(frozen, pid)
	}
	defer func() {
		for _, pid := range frozen {
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	out, err := h.post(cctx, "unacknowledged", h.accounts[0], h.accounts[1], 7)
	cancel()
	if err == nil && out.Status == 201 {
		t.Fatal("acknowledged with one synchronous standby of the two required")
	}
	// ahead leaves with that WAL and the primary is lost. The frozen receivers die
	// without reading what waits in their sockets (their servers restart them, with
	// nobody left to stream from), so the two that remain lack that WAL.
	h.shard.StopInstance(ahead)
	h.shard.Kill(primary)
	for _, pid := range frozen {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	frozen = nil
	promoted := waitPrimaryOtherThan(t, h.shard, primary, time.Minute)
	if promoted == ahead {
		t.Fatalf("%s was stopped and cannot have been promoted", ahead)
	}
	if err := h.shard.Restart(ahead); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		st, err := h.shard.Client(ahead).Status(ctx)
		if err == nil && st.WALReceiver == "streaming" && st.Upstream == promoted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not rejoin %s: %+v %v", ahead, promoted, st, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Writes need two standbys again: the rejoined one counts.
	cctx, cancel = context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err = h.post(cctx, "after-rejoin", h.accounts[0], h.accounts[1], 3)
	if err != nil || out.Status != 201 {
		t.Fatalf("after the rejoin: %v %s", err, out.Body)
	}
	h.checkLedger(ctx, ahead, []string{"after-rejoin"})
}

// rewinds counts the rewinds the instance managers have logged so far.
func (h *haLedger) rewinds() int {
	b, err := os.ReadFile(h.log)
	if err != nil {
		h.t.Fatal(err)
	}
	return strings.Count(string(b), "msg=rewound")
}

// waitStreaming waits until every instance but primary streams from it.
func (h *haLedger) waitStreaming(primary string) {
	h.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for _, r := range h.replicas(primary) {
		for {
			st, err := h.shard.Client(r).Status(context.Background())
			if err == nil && st.WALReceiver == "streaming" && st.Upstream == primary {
				break
			}
			if time.Now().After(deadline) {
				h.t.Fatalf("%s does not stream from %s: %+v %v", r, primary, st, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// After a switchover (a new timeline), a crash and restart of the new primary leaves its
// standbys alone: they resume streaming without a rewind. Before, their control files
// still named the old timeline, so the divergence check took them for diverged and
// every standby was stopped, rewound ("no rewind required") and restarted.
func TestPrimaryRestartAfterSwitchoverRewindsNothing(t *testing.T) {
	h := startHALedgerWith(t, 3, anyOneRequired, time.Minute) // a restart, not a failover
	ctx := context.Background()
	old := h.shard.CurrentPrimary()
	target := h.replicas(old)[0]
	if err := h.shard.Switchover(ctx, target); err != nil {
		t.Fatal(err)
	}
	h.waitStreaming(target)
	time.Sleep(time.Second) // a few manager ticks while streaming on the new timeline
	before := h.rewinds()
	// kill -9 of the primary's postgres alone, as a crash would: its manager restarts it.
	pidFile, err := os.ReadFile(filepath.Join(h.shard.Dir(), target, "pgdata", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.SplitN(string(pidFile), "\n", 2)[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the standbys find the primary gone before it is back
	h.waitStreaming(target)
	if got := h.shard.CurrentPrimary(); got != target {
		t.Fatalf("primary %s, want %s restarted in place", got, target)
	}
	if after := h.rewinds(); after != before {
		t.Errorf("%d standby rewinds after the primary restarted, want none", after-before)
	}
}
