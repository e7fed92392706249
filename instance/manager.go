// Package instance is the PostgreSQL instance manager, `tally instance run`: the main
// process of every PostgreSQL pod. It bootstraps its instance (initdb for the first
// primary, pg_basebackup for a replica, pg_rewind for a primary that lost its role or a
// standby that diverged), runs postgres as its child, keeps synchronous_standby_names
// true to the shard, fences a primary that finds itself isolated, and serves an
// authenticated status API through which the operator promotes, fences and repoints
// instances. Which instance is primary is never decided here: the failover package
// decides, and the Locator tells.
package instance

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/internal/postgres"
)

// Defaults and bounds of the manager's work.
const (
	// DefaultTick is how often the manager checks its instance.
	DefaultTick = time.Second
	// DefaultIsolationTimeout is how long a primary may see neither its Locator nor any
	// peer before it fences itself.
	DefaultIsolationTimeout = 10 * time.Second
	// DefaultReplicationUser is the role replicas stream as.
	DefaultReplicationUser = "streaming_replica"
	// promoteTimeout bounds the wait for pg_promote.
	promoteTimeout = 60
	// toolTimeout bounds pg_basebackup and pg_rewind.
	toolTimeout = 30 * time.Minute
	// queryTimeout bounds each status query of the local server.
	queryTimeout = 5 * time.Second
	// confFile is the manager's own settings file inside the data directory, included
	// from postgresql.conf; it is rewritten whenever the role or the standbys change.
	confFile = "tally.conf"
	// fenceFile, beside the data directory, keeps a fenced instance down across restarts.
	fenceFile = "tally.fenced"
)

// Member is one instance of the shard, as its peers reach it.
type Member struct {
	Name string
	// Host and Port reach its PostgreSQL.
	Host string
	Port int
	// StatusURL is the base URL of its manager's status API.
	StatusURL string
}

// Locator names the instance that should be primary now: in Kubernetes, the shard's
// status.targetPrimary; in a local shard, the harness's record. An empty name means a
// failover is deciding; an error means the source could not be reached.
type Locator interface {
	TargetPrimary(ctx context.Context) (string, error)
}

// Bootstrap is what the first primary creates after initdb.
type Bootstrap struct {
	// Database is created when not empty.
	Database string
	// AppUser is the ledger service's login role, with AppPassword when set.
	AppUser, AppPassword string
}

// Config describes one instance.
type Config struct {
	Name    string
	DataDir string // PGDATA
	BinDir  string // found with postgres.FindBinDir when empty
	Listen  string // listen_addresses; 127.0.0.1 when empty
	Port    int
	// Members lists every instance of the shard, this one included, in a stable order.
	Members []Member
	Sync    SyncRule
	// Token authenticates calls to the status API; it must not be empty.
	Token string
	// Passwords of the superuser and the replication role. When empty, connections from
	// anywhere on loopback are trusted (a local shard); when set, only loopback inside the
	// pod is trusted and everything else needs SCRAM.
	SuperuserPassword   string
	ReplicationUser     string
	ReplicationPassword string
	Bootstrap           Bootstrap
	// TLS, when set, is the instance's certificate: PostgreSQL serves TLS and requires it
	// from outside the pod, peers are verified, and the status API is HTTPS.
	TLS *TLS
	// Params are extra postgresql.conf settings.
	Params map[string]string
	// Include is a settings file (the allow-listed parameters from the spec) read before
	// the manager's own, which win.
	Include string
	// LogicalDecoding runs PostgreSQL with wal_level=logical (change data capture).
	LogicalDecoding bool
	// PrimarySetup, when set, is run on the database Bootstrap.Database of this instance
	// while it is the primary, each tick until it succeeds once (after each start): what
	// must exist on a primary but may not at first (it can wait for the schema).
	PrimarySetup     func(ctx context.Context, conn *pgx.Conn) error
	Locator          Locator
	Tick             time.Duration
	IsolationTimeout time.Duration
	Log              *slog.Logger
}

// Manager runs one PostgreSQL instance.
type Manager struct {
	cfg   Config
	log   *slog.Logger
	peers *peerChecker

	op sync.Mutex // serialises changes to the instance: the loop's and the API's
	// divergenceCheck names the primary the loop asks, outside op, whether this standby
	// diverged from it (tickReplica sets it under op; Run takes it).
	divergenceCheck string
	// streamed is the upstream this standby last streamed from and the timeline it
	// received from it; only the loop's divergence check reads and writes it.
	streamed struct {
		from string
		tli  int64
	}
	// setUp is the server Config.PrimarySetup last succeeded on (the loop's only).
	setUp *postgres.Server

	mu            sync.Mutex // guards the fields below, which Status reads
	members       []Member
	rule          SyncRule
	pg            *postgres.Server
	upstream      string
	isolatedSince time.Time
	selfFenced    bool
	killed        bool
}

// New checks the configuration and returns a manager; Run starts it.
func New(cfg Config) (*Manager, error) {
	switch {
	case cfg.Name == "":
		return nil, errors.New("instance: no name")
	case cfg.DataDir == "":
		return nil, errors.New("instance: no data directory")
	case cfg.Port <= 0:
		return nil, errors.New("instance: no port")
	case cfg.Token == "":
		return nil, errors.New("instance: the status API needs a token; it is never open")
	case cfg.Locator == nil:
		return nil, errors.New("instance: no locator")
	case !slices.ContainsFunc(cfg.Members, func(m Member) bool { return m.Name == cfg.Name }):
		return nil, fmt.Errorf("instance: %s is not among the shard's members", cfg.Name)
	}
	if cfg.BinDir == "" {
		dir, err := postgres.FindBinDir()
		if err != nil {
			return nil, err
		}
		cfg.BinDir = dir
	}
	if cfg.ReplicationUser == "" {
		cfg.ReplicationUser = DefaultReplicationUser
	}
	if cfg.Tick <= 0 {
		cfg.Tick = DefaultTick
	}
	if cfg.IsolationTimeout <= 0 {
		cfg.IsolationTimeout = DefaultIsolationTimeout
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	log := cfg.Log.With("instance", cfg.Name)
	return &Manager{cfg: cfg, log: log, peers: newPeerChecker(cfg.Name, cfg.Members, cfg.TLS), members: cfg.Members, rule: cfg.Sync}, nil
}

// SetShape changes the shard's members and synchronous rule while the manager runs, as
// instances are added or removed; a primary rewrites synchronous_standby_names at its
// next check. This instance must stay a member.
func (m *Manager) SetShape(members []Member, rule SyncRule) error {
	if !slices.ContainsFunc(members, func(mb Member) bool { return mb.Name == m.cfg.Name }) {
		return fmt.Errorf("instance: %s is not among the new members", m.cfg.Name)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.members, m.rule = slices.Clone(members), rule
	m.peers = newPeerChecker(m.cfg.Name, members, m.cfg.TLS)
	return nil
}

// shape is the current members and rule.
func (m *Manager) shape() ([]Member, SyncRule, *peerChecker) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.members, m.rule, m.peers
}

// Name is the instance's name.
func (m *Manager) Name() string { return m.cfg.Name }

// Run keeps the instance running in the role the Locator gives it until ctx ends, then
// stops PostgreSQL cleanly.
func (m *Manager) Run(ctx context.Context) error {
	defer m.stopPostgres()
	for {
		m.op.Lock()
		if m.killed {
			m.op.Unlock()
			return nil
		}
		err := m.tick(ctx)
		check := m.divergenceCheck
		m.divergenceCheck = ""
		m.op.Unlock()
		if err == nil && check != "" {
			err = m.rejoinIfDiverged(ctx, check)
		}
		switch {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, errUpstreamNotReady):
			m.log.Info("waiting for the primary to accept connections", "err", err.Error())
		default:
			m.log.Warn("instance check", "err", err.Error())
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(m.cfg.Tick):
		}
	}
}

// tick brings the instance one step closer to what it should be.
func (m *Manager) tick(ctx context.Context) error {
	m.mu.Lock()
	selfFenced := m.selfFenced
	m.mu.Unlock()
	if selfFenced {
		if _, err := m.cfg.Locator.TargetPrimary(ctx); err != nil {
			return nil // still isolated: stay down
		}
		m.log.Info("locator reachable again; leaving isolation")
		m.mu.Lock()
		m.selfFenced, m.isolatedSince = false, time.Time{}
		m.mu.Unlock()
	}
	if m.fenced() {
		m.stopPostgres()
		return nil
	}
	pg := m.server()
	if pg == nil || pg.Exited() {
		return m.start(ctx)
	}
	if err := m.renewServerCert(ctx); err != nil {
		m.log.Warn("the server certificate was not renewed; serving the one before", "err", err.Error())
	}
	primary, err := m.inRecovery(ctx)
	if err != nil {
		return err
	}
	if primary {
		return m.tickPrimary(ctx)
	}
	return m.tickReplica(ctx)
}

// tickPrimary keeps synchronous_standby_names current and steps down when the primary
// role has moved elsewhere or this primary is isolated.
func (m *Manager) tickPrimary(ctx context.Context) error {
	target, lerr := m.cfg.Locator.TargetPrimary(ctx)
	if lerr == nil && target != "" && target != m.cfg.Name {
		// Someone else holds the primary role: stop taking writes now; the next tick
		// rewinds this instance and makes it follow.
		m.log.Warn("primary role moved to another instance; shutting down to rejoin", "target", target)
		m.stopPostgres()
		return nil
	}
	if err := m.checkIsolation(ctx, lerr); err != nil {
		return err
	}
	if err := m.updateSyncStandbys(ctx); err != nil {
		return err
	}
	return m.primarySetup(ctx)
}

// primarySetup runs Config.PrimarySetup until it succeeds once for this server.
func (m *Manager) primarySetup(ctx context.Context) error {
	pg := m.server()
	if m.cfg.PrimarySetup == nil || pg == m.setUp {
		return nil
	}
	conn, err := m.connect(ctx, m.cfg.Bootstrap.Database)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if err := m.cfg.PrimarySetup(ctx, conn); err != nil {
		return fmt.Errorf("instance: primary setup (tried again next tick): %w", err)
	}
	m.setUp = pg
	return nil
}

// checkIsolation fences this primary when for IsolationTimeout it has reached neither
// its Locator nor any peer.
//
// Why: a primary cut off from everything may already have been replaced. With
// dataDurability required its commits would wait anyway (its standbys are gone), but
// with preferred it would go on acknowledging writes nobody else will ever see. Shutting
// down is the only answer that cannot split the brain; when it can see again, the
// Locator says whether it is still the primary.
func (m *Manager) checkIsolation(ctx context.Context, locatorErr error) error {
	_, _, peers := m.shape()
	// A shard of one has nobody who could take over, so an API server outage must not
	// take its only database down.
	if locatorErr == nil || len(peers.urls) == 0 || peers.anyReachable(ctx) {
		m.mu.Lock()
		m.isolatedSince = time.Time{}
		m.mu.Unlock()
		return nil
	}
	m.mu.Lock()
	if m.isolatedSince.IsZero() {
		m.isolatedSince = time.Now()
	}
	isolated := time.Since(m.isolatedSince)
	m.mu.Unlock()
	if isolated < m.cfg.IsolationTimeout {
		return nil
	}
	m.log.Error("primary isolated from its locator and every peer; fencing itself", "for", isolated.String(), "locator", locatorErr.Error())
	m.mu.Lock()
	m.selfFenced = true
	m.mu.Unlock()
	m.stopPostgres()
	return nil
}

// tickReplica follows the target primary if it moved; whether this standby diverged
// from it is asked next, outside op (rejoinIfDiverged).
func (m *Manager) tickReplica(ctx context.Context) error {
	target, err := m.cfg.Locator.TargetPrimary(ctx)
	if err != nil || target == "" || target == m.cfg.Name {
		return nil
	}
	if target != m.currentUpstream() {
		m.log.Info("following the new primary", "primary", target)
		return m.repoint(ctx, target)
	}
	m.divergenceCheck = target
	return nil
}

// rejoinIfDiverged rewinds this standby and restarts it following primary if its
// history diverged from the primary's. The question connects to the primary, which may
// hang with its connections open: asked under op, it would hold a failover's Detach or
// Promote of this instance for as long. So it is asked without op, and acted on only if
// the instance still follows primary as a standby.
func (m *Manager) rejoinIfDiverged(ctx context.Context, primary string) error {
	diverged, err := m.diverged(ctx, primary)
	if err != nil {
		m.log.Debug("cannot tell whether this standby diverged", "err", err.Error())
		return nil
	}
	if !diverged {
		return nil
	}
	m.op.Lock()
	defer m.op.Unlock()
	if m.killed || m.fenced() || m.currentUpstream() != primary {
		return nil // detached, repointed or stopped meanwhile: the next tick looks again
	}
	if pg := m.server(); pg == nil || pg.Exited() {
		return nil
	}
	if isPrimary, err := m.inRecovery(ctx); err != nil || isPrimary {
		return err // promoted meanwhile
	}
	m.log.Warn("this standby holds WAL the primary's history does not; rewinding to rejoin it", "primary", primary)
	m.stopPostgres()
	if err := m.rewind(ctx, primary); err != nil {
		return err
	}
	return m.startAs(ctx, primary)
}

// diverged reports whether this standby, not streaming, has WAL past the point where the
// primary's history left the standby's timeline (see divergedFrom). A streaming standby
// has not.
func (m *Manager) diverged(ctx context.Context, primary string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	local, err := m.connect(ctx, "postgres")
	if err != nil {
		return false, err
	}
	defer local.Close(ctx)
	var streamingTLI, ourTLI int64
	var ourLSN *int64
	// The timeline of the last restartpoint lags behind a timeline switch the standby
	// already replayed; the one of its minimum recovery point follows sooner. The later
	// of the two, so a standby that followed a promotion is not taken for diverged.
	err = local.QueryRow(ctx, `
		SELECT coalesce((SELECT received_tli FROM pg_stat_wal_receiver WHERE status = 'streaming'), 0)::bigint,
		       greatest((SELECT timeline_id FROM pg_control_checkpoint()),
		                (SELECT min_recovery_end_timeline FROM pg_control_recovery()))::bigint,
		       (greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0')::bigint`).Scan(&streamingTLI, &ourTLI, &ourLSN)
	if err != nil {
		return false, fmt.Errorf("instance: read standby position: %w", err)
	}
	if streamingTLI > 0 {
		m.streamed.from, m.streamed.tli = m.currentUpstream(), streamingTLI
		return false, nil
	}
	if ourLSN == nil {
		return false, nil
	}
	// Both control-file timelines can still name the timeline before a switch this
	// standby already followed, long after it (no restartpoint since). A standby that
	// streamed a timeline from this very primary holds that timeline's WAL as the primary
	// wrote it, so it is on that timeline: without this, every restart of a primary after
	// a failover made its standbys rewind and restart for nothing.
	if m.streamed.from == primary && m.streamed.tli > ourTLI {
		ourTLI = m.streamed.tli
	}
	remote, err := m.connectMember(ctx, primary)
	if err != nil {
		return false, err
	}
	defer remote.Close(ctx)
	// The history file of every timeline after the first lists where the earlier ones
	// ended.
	var primaryTLI int64
	var history string
	err = remote.QueryRow(ctx, `
		WITH t AS (SELECT `+primaryTimelineSQL+`::bigint AS tli)
		SELECT t.tli, CASE WHEN t.tli > 1 THEN pg_read_file('pg_wal/' || lpad(upper(to_hex(t.tli)), 8, '0') || '.history') ELSE '' END
		FROM t`).Scan(&primaryTLI, &history)
	if err != nil {
		return false, fmt.Errorf("instance: read primary %s timeline history: %w", primary, err)
	}
	return divergedFrom(history, primaryTLI, ourTLI, LSN(*ourLSN))
}

// start decides how this instance starts, prepares its data and starts PostgreSQL.
func (m *Manager) start(ctx context.Context) error {
	target, err := m.cfg.Locator.TargetPrimary(ctx)
	if err != nil {
		return fmt.Errorf("instance: cannot learn the primary, so not starting: %w", err)
	}
	hasData := postgres.HasCluster(m.cfg.DataDir)
	action, err := planStart(hasData, m.isStandby(), m.cfg.Name, target)
	if err != nil {
		return err
	}
	m.log.Info("starting", "action", action.String(), "target", target)
	switch action {
	case startInitPrimary:
		return m.initPrimary(ctx)
	case startClone:
		if err := m.clone(ctx, target); err != nil {
			return err
		}
		return m.startAs(ctx, target)
	case startPrimary:
		return m.startAs(ctx, "")
	case startReplica:
		upstream := target
		if target == m.cfg.Name {
			upstream = "" // it will be promoted; until then it replays what it has
		}
		return m.startAs(ctx, upstream)
	case startRewind:
		if err := m.rewind(ctx, target); err != nil {
			return err
		}
		return m.startAs(ctx, target)
	}
	return fmt.Errorf("instance: unknown start action %d", action)
}

func (m *Manager) member(name string) (Member, error) {
	members, _, _ := m.shape()
	for _, mb := range members {
		if mb.Name == name {
			return mb, nil
		}
	}
	return Member{}, fmt.Errorf("instance: %s is not a member of the shard", name)
}

func (m *Manager) stateDir() string { return filepath.Dir(filepath.Clean(m.cfg.DataDir)) }

func (m *Manager) fenced() bool {
	m.mu.Lock()
	self := m.selfFenced
	m.mu.Unlock()
	if self {
		return true
	}
	_, err := os.Stat(filepath.Join(m.stateDir(), fenceFile))
	return err == nil
}

func (m *Manager) isStandby() bool {
	_, err := os.Stat(filepath.Join(m.cfg.DataDir, "standby.signal"))
	return err == nil
}

func (m *Manager) server() *postgres.Server {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pg
}

func (m *Manager) currentUpstream() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.upstream
}

// initPrimary creates the shard's first data directory and its roles.
func (m *Manager) initPrimary(ctx context.Context) error {
	if err := m.startAs(ctx, ""); err != nil { // postgres.Start runs initdb on an empty directory
		return err
	}
	return m.bootstrapRoles(ctx)
}

// bootstrapRoles creates the replication role, the service role and database, and sets
// the superuser's password. Every statement tolerates a rerun.
func (m *Manager) bootstrapRoles(ctx context.Context) error {
	conn, err := m.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	repl := pgx.Identifier{m.cfg.ReplicationUser}.Sanitize()
	stmts := []string{
		// No replica exists yet to confirm these commits; waiting for one would deadlock
		// the bootstrap that replicas clone from.
		"SET synchronous_commit TO local",
		fmt.Sprintf(`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s REPLICATION LOGIN; END IF; END $$`, quoteLiteral(m.cfg.ReplicationUser), repl),
	}
	passwords := map[string]string{m.cfg.ReplicationUser: m.cfg.ReplicationPassword, postgres.Superuser: m.cfg.SuperuserPassword}
	if b := m.cfg.Bootstrap; b.AppUser != "" {
		app := pgx.Identifier{b.AppUser}.Sanitize()
		stmts = append(stmts,
			fmt.Sprintf(`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE %s LOGIN; END IF; END $$`, quoteLiteral(b.AppUser), app))
		passwords[b.AppUser] = b.AppPassword
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("instance: bootstrap roles: %w", err)
		}
	}
	for role, password := range passwords {
		if password == "" {
			continue
		}
		if err := postgres.SetPassword(ctx, conn, role, password); err != nil {
			return err
		}
	}
	if db := m.cfg.Bootstrap.Database; db != "" {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", db).Scan(&exists); err != nil {
			return fmt.Errorf("instance: bootstrap database: %w", err)
		}
		if !exists {
			if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
				return fmt.Errorf("instance: bootstrap database: %w", err)
			}
		}
	}
	return nil
}

// clone copies the primary's data directory with pg_basebackup.
func (m *Manager) clone(ctx context.Context, primary string) error {
	src, err := m.member(primary)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(m.cfg.DataDir); err != nil { // a half-made copy from an earlier try
		return fmt.Errorf("instance: clear data directory: %w", err)
	}
	if err := postgres.MakeDataDir(m.cfg.DataDir); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, toolTimeout)
	defer cancel()
	_, err = postgres.RunTool(ctx, m.cfg.BinDir, "pg_basebackup", append(m.passwordEnv(m.cfg.ReplicationPassword), m.peerTLSEnv()...),
		"-D", m.cfg.DataDir, "-h", src.Host, "-p", strconv.Itoa(src.Port), "-U", m.cfg.ReplicationUser,
		"-X", "stream", "-c", "fast", "--no-password")
	if err != nil {
		_ = os.RemoveAll(m.cfg.DataDir)
		if msg := err.Error(); strings.Contains(msg, "Connection refused") || strings.Contains(msg, "the database system is starting up") {
			err = fmt.Errorf("%w: %w", errUpstreamNotReady, err) // a shard coming up: expected, not alarming
		}
		return fmt.Errorf("instance: clone from %s: %w", primary, err)
	}
	return m.markStandby()
}

// errUpstreamNotReady is a clone that found the primary not yet accepting connections,
// as every replica of a new shard does while the primary bootstraps.
var errUpstreamNotReady = errors.New("the primary does not accept connections yet")

// rewind turns a former primary into a copy of the new primary's history with pg_rewind,
// discarding whatever it wrote after the two diverged (none of it was acknowledged: a
// commit is acknowledged only once a synchronous standby has it).
func (m *Manager) rewind(ctx context.Context, primary string) error {
	src, err := m.member(primary)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, toolTimeout)
	defer cancel()
	if err := m.checkpointSource(ctx, primary); err != nil {
		return err
	}
	out, err := postgres.RunTool(ctx, m.cfg.BinDir, "pg_rewind", append(m.passwordEnv(m.cfg.SuperuserPassword), m.peerTLSEnv()...),
		"--target-pgdata", m.cfg.DataDir, "--source-server", memberConninfo(src))
	if err != nil {
		return fmt.Errorf("instance: rewind against %s: %w", primary, err)
	}
	m.log.Info("rewound", "source", primary, "output", strings.TrimSpace(string(out)))
	return m.markStandby()
}

// memberConninfo is how the superuser reaches a member's postgres database, in the
// form pg_rewind takes.
func memberConninfo(src Member) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=postgres", src.Host, src.Port, postgres.Superuser)
}

// connectMember opens a superuser connection to another member of the shard.
func (m *Manager) connectMember(ctx context.Context, name string) (*pgx.Conn, error) {
	src, err := m.member(name)
	if err != nil {
		return nil, err
	}
	cfg, err := pgx.ParseConfig(memberConninfo(src) + m.peerTLSConninfo() + " connect_timeout=5")
	if err != nil {
		return nil, fmt.Errorf("instance: conninfo of %s: %w", name, err)
	}
	cfg.Password = m.cfg.SuperuserPassword
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("instance: connect to %s: %w", name, err)
	}
	return conn, nil
}

// checkpointSource makes the rewind source write its timeline to its control file
// (see Promote), in case it was promoted by a manager that did not.
func (m *Manager) checkpointSource(ctx context.Context, source string) error {
	conn, err := m.connectMember(ctx, source)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("instance: checkpoint rewind source: %w", err)
	}
	return nil
}

func (m *Manager) passwordEnv(password string) []string {
	if password == "" {
		return nil
	}
	return []string{"PGPASSWORD=" + password}
}

func (m *Manager) markStandby() error {
	if err := os.WriteFile(filepath.Join(m.cfg.DataDir, "standby.signal"), nil, 0o600); err != nil {
		return fmt.Errorf("instance: write standby.signal: %w", err)
	}
	return m.chownToServer(filepath.Join(m.cfg.DataDir, "standby.signal"))
}

// startAs writes the instance's settings and starts PostgreSQL: as a replica following
// upstream, or as primary when upstream is empty and the data is not a standby's.
func (m *Manager) startAs(ctx context.Context, upstream string) error {
	fresh := !postgres.HasCluster(m.cfg.DataDir) // postgres.Start runs initdb
	if !fresh {
		if err := m.writeSettings(upstream, nil); err != nil {
			return err
		}
	}
	pg, err := postgres.Start(ctx, postgres.Config{
		BinDir: m.cfg.BinDir, DataDir: m.cfg.DataDir, Port: m.cfg.Port, Listen: m.cfg.Listen,
		Params: m.staticParams(), LogFile: filepath.Join(m.stateDir(), "postgres-"+m.cfg.Name+".log"),
		NoInit: upstream != "", DataChecksums: true,
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.pg, m.upstream = pg, upstream
	m.mu.Unlock()
	if !fresh {
		return nil
	}
	// A freshly initialised directory gets its settings now, and a reload applies them.
	if err := m.writeSettings(upstream, nil); err != nil {
		return err
	}
	return m.reload(ctx)
}

// staticParams are the settings every instance needs from its first start; they go on
// the command line, so nothing in a file can weaken them.
func (m *Manager) staticParams() map[string]string {
	p := map[string]string{}
	for k, v := range m.cfg.Params {
		p[k] = v
	}
	for k, v := range ServerParams() {
		p[k] = v
	}
	if m.cfg.LogicalDecoding {
		p["wal_level"] = "logical" // replica's and more
	}
	return p
}

// ServerParams are the PostgreSQL settings every instance runs with, whatever its
// LedgerCluster asks for: durable commits and what replication and pg_rewind need.
func ServerParams() map[string]string {
	return map[string]string{
		"wal_level":          "replica",
		"hot_standby":        "on",
		"max_wal_senders":    "10",
		"wal_log_hints":      "on", // pg_rewind needs it
		"wal_keep_size":      "512MB",
		"synchronous_commit": "on",
		"fsync":              "on",
		"full_page_writes":   "on",
		// A peer that stops answering (a frozen pod, a cut network) is dropped after 5 s
		// rather than PostgreSQL's 60 s: a replica whose connection to a hung primary stays
		// open counts as streaming, and a failover waits until no replica streams. Each side
		// pings the other at half the timeout, so a live but idle peer is never dropped.
		"wal_receiver_timeout": "5s",
		"wal_sender_timeout":   "5s",
	}
}

// writeSettings writes tally.conf (synchronous standbys and, on a replica, where to
// stream from), the client authentication rules, and includes tally.conf from
// postgresql.conf once. streaming lists the standbys streaming from this instance when
// it is a running primary (it matters with preferred durability only).
func (m *Manager) writeSettings(upstream string, streaming []string) error {
	names := m.syncStandbyNames(streaming)
	var b strings.Builder
	b.WriteString("# Written by the tally instance manager; edits are overwritten.\n")
	if m.cfg.Include != "" {
		fmt.Fprintf(&b, "include_if_exists = %s\n", quoteLiteral(m.cfg.Include))
	}
	// The static settings are on the command line too; here they also hold for the
	// single-user crash recovery pg_rewind runs, which would otherwise record
	// wal_log_hints off in pg_control and refuse to rewind.
	params := m.staticParams()
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteLiteral(params[k]))
	}
	fmt.Fprintf(&b, "synchronous_standby_names = %s\n", quoteLiteral(names))
	b.WriteString("recovery_target_timeline = 'latest'\n")
	if m.cfg.TLS != nil {
		if _, err := m.installServerCert(); err != nil {
			return err
		}
		b.WriteString(tlsSettings())
	}
	if upstream != "" {
		src, err := m.member(upstream)
		if err != nil {
			return err
		}
		// connect_timeout: a connection attempt to a frozen primary (the kernel completes
		// the TCP handshake, nobody answers) gives up instead of hanging.
		conninfo := fmt.Sprintf("host=%s port=%d user=%s application_name=%s connect_timeout=5", src.Host, src.Port, m.cfg.ReplicationUser, conninfoQuote(m.cfg.Name)) +
			m.replicationTLSConninfo()
		if m.cfg.ReplicationPassword != "" {
			conninfo += " password=" + conninfoQuote(m.cfg.ReplicationPassword)
		}
		fmt.Fprintf(&b, "primary_conninfo = %s\n", quoteLiteral(conninfo))
	} else {
		b.WriteString("primary_conninfo = ''\n")
	}
	if err := m.writeDataFile(confFile, b.String()); err != nil {
		return err
	}
	if m.cfg.SuperuserPassword != "" {
		// From outside the pod: a password, and with TLS only over TLS (no line admits a
		// connection in the clear, so it is refused).
		remote := "host"
		if m.cfg.TLS != nil {
			remote = "hostssl"
		}
		hba := fmt.Sprintf(`# Written by the tally instance manager.
host all all 127.0.0.1/32 trust
host replication all 127.0.0.1/32 trust
%[2]s replication %[1]s all scram-sha-256
%[2]s all all all scram-sha-256
`, m.cfg.ReplicationUser, remote)
		if err := m.writeDataFile("pg_hba.conf", hba); err != nil {
			return err
		}
	}
	main := filepath.Join(m.cfg.DataDir, "postgresql.conf")
	body, err := os.ReadFile(main)
	if err != nil {
		return fmt.Errorf("instance: read postgresql.conf: %w", err)
	}
	include := "include_if_exists = '" + confFile + "'"
	if !strings.Contains(string(body), include) {
		body = append(body, []byte("\n"+include+"\n")...)
		if err := m.writeDataFile("postgresql.conf", string(body)); err != nil {
			return err
		}
	}
	return nil
}

// writeDataFile replaces a file in the data directory atomically, owned by the server.
func (m *Manager) writeDataFile(name, content string) error {
	path := filepath.Join(m.cfg.DataDir, name)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return fmt.Errorf("instance: write %s: %w", name, err)
	}
	if err := m.chownToServer(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("instance: write %s: %w", name, err)
	}
	return nil
}

// chownToServer gives a file we wrote to the account postgres runs as: the owner of the
// data directory.
func (m *Manager) chownToServer(path string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	uid, gid, err := ownerOf(m.cfg.DataDir)
	if err != nil {
		return err
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return fmt.Errorf("instance: chown %s: %w", path, err)
	}
	return nil
}

// quoteLiteral quotes a string the way both SQL and postgresql.conf read it.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
func conninfoQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

func (m *Manager) memberNames() []string {
	members, _, _ := m.shape()
	names := make([]string, len(members))
	for i, mb := range members {
		names[i] = mb.Name
	}
	return names
}

func (m *Manager) syncStandbyNames(streaming []string) string {
	_, rule, _ := m.shape()
	return SyncStandbyNames(rule, m.cfg.Name, m.memberNames(), streaming)
}

// updateSyncStandbys rewrites synchronous_standby_names when the rule, the members or
// (with preferred durability) the streaming standbys changed it: one connection, one
// query, and a write and reload only on a change.
func (m *Manager) updateSyncStandbys(ctx context.Context) error {
	conn, err := m.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var have string
	var streaming []string
	err = conn.QueryRow(ctx, `SELECT current_setting('synchronous_standby_names'),
		array(SELECT application_name FROM pg_stat_replication WHERE state = 'streaming')`).Scan(&have, &streaming)
	if err != nil {
		return fmt.Errorf("instance: read synchronous standbys: %w", err)
	}
	want := m.syncStandbyNames(streaming)
	if have == want {
		return nil
	}
	m.log.Info("synchronous standbys changed", "from", have, "to", want)
	if err := m.writeSettings("", streaming); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("instance: reload: %w", err)
	}
	return nil
}

func (m *Manager) reload(ctx context.Context) error {
	conn, err := m.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("instance: reload: %w", err)
	}
	return nil
}

// connect opens a superuser connection to the local server over loopback.
func (m *Manager) connect(ctx context.Context, db string) (*pgx.Conn, error) {
	dsn := fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable&connect_timeout=5", postgres.Superuser, m.cfg.Port, db)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("instance: connect to local server: %w", err)
	}
	return conn, nil
}

// inRecovery reports whether the running server is a primary (true) or a standby.
func (m *Manager) inRecovery(ctx context.Context) (primary bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	conn, err := m.connect(ctx, "postgres")
	if err != nil {
		return false, err
	}
	defer conn.Close(ctx)
	var recovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&recovery); err != nil {
		return false, fmt.Errorf("instance: read role: %w", err)
	}
	return !recovery, nil
}

// stopPostgres shuts PostgreSQL down with a fast shutdown, which first sends every
// standby the WAL it has not yet received.
func (m *Manager) stopPostgres() {
	m.mu.Lock()
	pg := m.pg
	m.pg = nil
	m.mu.Unlock()
	if pg == nil {
		return
	}
	if err := pg.Stop(); err != nil {
		m.log.Error("stop postgres", "err", err.Error())
	}
}

// Kill is what losing the pod does: PostgreSQL and all its backends get SIGKILL, and
// the manager stops at once, cleaning up nothing. Crash and failover tests use it.
func (m *Manager) Kill() {
	m.op.Lock()
	defer m.op.Unlock()
	m.mu.Lock()
	pg := m.pg
	m.pg, m.killed = nil, true
	m.mu.Unlock()
	if pg != nil {
		pg.Kill()
	}
}

// Promote makes this replica the primary. synchronous_standby_names is written before
// the promotion, so the first commit the new primary acknowledges already waited for a
// standby.
func (m *Manager) Promote(ctx context.Context) error {
	m.op.Lock()
	defer m.op.Unlock()
	if m.fenced() {
		return errors.New("instance: fenced; will not promote")
	}
	pg := m.server()
	if pg == nil || pg.Exited() {
		return errors.New("instance: postgres is not running")
	}
	primary, err := m.inRecovery(ctx)
	if err != nil {
		return err
	}
	if primary {
		return nil
	}
	m.mu.Lock()
	m.upstream = ""
	m.mu.Unlock()
	if err := m.writeSettings("", nil); err != nil {
		return err
	}
	if err := m.reload(ctx); err != nil {
		return err
	}
	conn, err := m.connect(ctx, "postgres")
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var ok bool
	if err := conn.QueryRow(ctx, "SELECT pg_promote(true, $1)", promoteTimeout).Scan(&ok); err != nil {
		return fmt.Errorf("instance: promote: %w", err)
	}
	if !ok {
		return fmt.Errorf("instance: promote: not done within %ds", promoteTimeout)
	}
	// pg_rewind reads the source's timeline from its control file, which only a
	// checkpoint updates; without one, a former primary rewound against us right away
	// would be told "same timeline, no rewind required" and never follow.
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		return fmt.Errorf("instance: checkpoint after promotion: %w", err)
	}
	m.log.Info("promoted to primary")
	return nil
}

// Fence stops PostgreSQL and keeps it stopped, across restarts of the manager, until
// Follow or Unfence.
func (m *Manager) Fence(_ context.Context) error {
	m.op.Lock()
	defer m.op.Unlock()
	if err := os.WriteFile(filepath.Join(m.stateDir(), fenceFile), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o600); err != nil {
		return fmt.Errorf("instance: fence: %w", err)
	}
	m.stopPostgres()
	m.log.Warn("fenced")
	return nil
}

// Unfence lets the instance start again in whatever role the Locator gives it.
func (m *Manager) Unfence(_ context.Context) error {
	m.op.Lock()
	defer m.op.Unlock()
	if err := os.Remove(filepath.Join(m.stateDir(), fenceFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("instance: unfence: %w", err)
	}
	m.log.Info("unfenced")
	return nil
}

// Detach makes a running replica stop streaming from its upstream and stay a replica of
// nobody until Follow. A failover detaches every replica before it chooses whom to
// promote, so a lost primary that comes back cannot get a commit acknowledged by a
// standby the new primary will not have.
func (m *Manager) Detach(ctx context.Context) error {
	m.op.Lock()
	defer m.op.Unlock()
	pg := m.server()
	if pg == nil || pg.Exited() {
		return errors.New("instance: postgres is not running")
	}
	primary, err := m.inRecovery(ctx)
	if err != nil {
		return err
	}
	if primary {
		return errors.New("instance: a primary has no upstream to detach from")
	}
	if err := m.repoint(ctx, ""); err != nil {
		return err
	}
	m.log.Warn("detached from the upstream: streaming from nobody until told whom to follow")
	return nil
}

// Follow makes this instance a replica of primary: a running replica is repointed; a
// primary (or a fenced former primary) is stopped, rewound and restarted as a replica.
func (m *Manager) Follow(ctx context.Context, primary string) error {
	if primary == m.cfg.Name {
		return errors.New("instance: cannot follow itself")
	}
	if _, err := m.member(primary); err != nil {
		return err
	}
	m.op.Lock()
	defer m.op.Unlock()
	if err := os.Remove(filepath.Join(m.stateDir(), fenceFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("instance: unfence: %w", err)
	}
	pg := m.server()
	running := pg != nil && !pg.Exited()
	if running {
		isPrimary, err := m.inRecovery(ctx)
		if err != nil {
			return err
		}
		if !isPrimary {
			return m.repoint(ctx, primary)
		}
		m.log.Warn("demoting: stopping to rejoin as a replica", "primary", primary)
		m.stopPostgres()
	}
	if postgres.HasCluster(m.cfg.DataDir) && !m.isStandby() {
		if err := m.rewind(ctx, primary); err != nil {
			return err
		}
	}
	if !postgres.HasCluster(m.cfg.DataDir) {
		if err := m.clone(ctx, primary); err != nil {
			return err
		}
	}
	return m.startAs(ctx, primary)
}

// repoint makes a running replica stream from primary (a reload is enough since
// PostgreSQL 13).
func (m *Manager) repoint(ctx context.Context, primary string) error {
	if err := m.writeSettings(primary, nil); err != nil {
		return err
	}
	if err := m.reload(ctx); err != nil {
		return err
	}
	m.mu.Lock()
	m.upstream = primary
	m.mu.Unlock()
	return nil
}
