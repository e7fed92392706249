// Package localshard runs one shard's high-availability shape on loopback: N instance
// managers, each with its own PostgreSQL and status API, a TCP proxy that plays the -rw
// Service (it always leads to the current primary), and a small control loop that plays
// the operator's failover part with the same failover package the operator uses. The
// failover tests and `tally dev --instances N` run on it.
package localshard

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tallyhq/tally/failover"
	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/pki"
	"github.com/tallyhq/tally/internal/postgres"
)

// Defaults of the control loop.
const (
	// DefaultFailoverDelay is how long the primary must stay unhealthy before a failover.
	DefaultFailoverDelay = 2 * time.Second
	// controlInterval is how often the control loop observes the shard.
	controlInterval = 200 * time.Millisecond
	// convergeEvery is how many control rounds pass between Converge calls.
	convergeEvery = 5
	// startTimeout bounds the wait for the shard to come up.
	startTimeout = 3 * time.Minute
)

// Config describes a local shard.
type Config struct {
	// Dir holds every instance's data; it is reused across runs.
	Dir       string
	Instances int
	Sync      instance.SyncRule
	// ProxyPort is the -rw port clients use; a free one when zero.
	ProxyPort int
	// Ports of the instances' PostgreSQL and status servers; free ones when empty.
	PGPorts, StatusPorts []int
	Bootstrap            instance.Bootstrap
	FailoverDelay        time.Duration
	// Tick of the instance managers (instance.DefaultTick when zero).
	Tick time.Duration
	Log  *slog.Logger
	// Event receives every failover step; it may be nil.
	Event func(failover.Event)
	// Token of the status APIs; a random one when empty.
	Token string
	// TLS, when set, is every instance's certificate: PostgreSQL and the status APIs
	// serve TLS, and the instances and the failover loop verify each other with its CA.
	TLS *instance.TLS
}

// Shard is a running local shard.
type Shard struct {
	cfg     Config
	token   string
	members []instance.Member
	loc     *locator
	proxy   *proxy
	fs      *failover.Shard

	mu   sync.Mutex
	runs map[string]*run
	// held keeps each instance's status port bound from Start until its manager first
	// serves on it: a port chosen free and left unbound meanwhile can be taken by
	// anything else on the machine (another test's connection, say).
	held map[string]net.Listener

	stopLoop context.CancelFunc
	loopDone chan struct{}
}

// run is one instance manager running with its status server: one "pod".
type run struct {
	mgr     *instance.Manager
	cancel  context.CancelFunc
	done    chan struct{}
	srv     *http.Server
	dataDir string
	gate    *gate
}

// gate holds every status API request while the instance is frozen, as a stopped
// process's listening socket does: connections are accepted and never answered.
type gate struct {
	mu     sync.Mutex
	thawed chan struct{} // closed while not frozen
}

func newGate() *gate {
	g := &gate{thawed: make(chan struct{})}
	close(g.thawed)
	return g
}

func (g *gate) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g.mu.Lock()
		thawed := g.thawed
		g.mu.Unlock()
		select {
		case <-thawed:
			h.ServeHTTP(w, r)
		case <-r.Context().Done():
		}
	})
}

func (g *gate) set(frozen bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.thawed:
		if frozen {
			g.thawed = make(chan struct{})
		}
	default:
		if !frozen {
			close(g.thawed)
		}
	}
}

// Start brings the shard up (first instance primary unless the directory remembers
// another) and returns once the primary takes writes through the proxy.
func Start(ctx context.Context, cfg Config) (*Shard, error) {
	if cfg.Instances < 1 {
		return nil, errors.New("localshard: need at least one instance")
	}
	if cfg.FailoverDelay <= 0 {
		cfg.FailoverDelay = DefaultFailoverDelay
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("localshard: %w", err)
	}
	_ = os.Chmod(cfg.Dir, 0o755) // postgres may run as another OS user
	if cfg.Token == "" {
		cfg.Token = rand.Text()
	}
	s := &Shard{cfg: cfg, token: cfg.Token, runs: map[string]*run{}, held: map[string]net.Listener{}}
	for i := 1; i <= cfg.Instances; i++ {
		pgPort, err := portAt(cfg.PGPorts, i-1)
		if err != nil {
			return nil, err
		}
		statusPort, err := portAt(cfg.StatusPorts, i-1)
		if err != nil {
			return nil, err
		}
		scheme := "http"
		if cfg.TLS != nil {
			scheme = "https"
		}
		m := instance.Member{
			Name: fmt.Sprintf("instance-%d", i), Host: "127.0.0.1", Port: pgPort,
			StatusURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, statusPort),
		}
		ln, err := net.Listen("tcp", statusAddr(m))
		if err != nil {
			s.releaseHeld()
			return nil, fmt.Errorf("localshard: status listener of %s: %w", m.Name, err)
		}
		s.held[m.Name] = ln
		s.members = append(s.members, m)
	}
	primary, err := readPrimary(cfg.Dir)
	if err != nil {
		return nil, err
	}
	if primary == "" {
		primary = s.members[0].Name
	}
	s.loc = &locator{dir: cfg.Dir, target: primary}
	if s.proxy, err = startProxy(cfg.ProxyPort); err != nil {
		return nil, err
	}
	s.fs = &failover.Shard{Rule: cfg.Sync, Primary: primary, Publisher: s, Event: s.event, Instances: map[string]failover.Instance{}}
	for _, m := range s.members {
		s.fs.Members = append(s.fs.Members, m.Name)
		var verify *tls.Config
		if cfg.TLS != nil {
			verify = pki.ClientConfig(cfg.TLS.CAFile)
		}
		s.fs.Instances[m.Name] = instance.NewClient(m.StatusURL, s.token, verify)
	}
	if err := s.Primary(ctx, primary); err != nil {
		return nil, err
	}
	// The primary first: replicas clone it.
	order := []string{primary}
	for _, m := range s.members {
		if m.Name != primary {
			order = append(order, m.Name)
		}
	}
	for _, name := range order {
		if err := s.Restart(name); err != nil {
			s.Stop()
			return nil, err
		}
	}
	if err := s.WaitReady(ctx, startTimeout); err != nil {
		s.Stop()
		return nil, err
	}
	loopCtx, cancel := context.WithCancel(context.Background())
	s.stopLoop, s.loopDone = cancel, make(chan struct{})
	go s.control(loopCtx)
	return s, nil
}

func portAt(ports []int, i int) (int, error) {
	if i < len(ports) && ports[i] > 0 {
		return ports[i], nil
	}
	return postgres.FreePort()
}

func (s *Shard) event(e failover.Event) {
	level := slog.LevelInfo
	if e.Warning {
		level = slog.LevelWarn
	}
	s.cfg.Log.Log(context.Background(), level, "failover: "+e.Message, "reason", e.Reason)
	if s.cfg.Event != nil {
		s.cfg.Event(e)
	}
}

// Members lists the instances.
func (s *Shard) Members() []instance.Member { return append([]instance.Member(nil), s.members...) }

// Dir is where the instances keep their data, one folder each.
func (s *Shard) Dir() string { return s.cfg.Dir }

// Token is the status API token of the shard's managers.
func (s *Shard) Token() string { return s.token }

// ProxyPort is the port of the -rw proxy on 127.0.0.1.
func (s *Shard) ProxyPort() int { return s.proxy.port() }

// DSN connects through the proxy, as user, to database db; with TLS it verifies the
// server's certificate.
func (s *Shard) DSN(user, db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?%s", user, s.ProxyPort(), db, s.sslParams())
}

func (s *Shard) sslParams() string {
	if s.cfg.TLS == nil {
		return "sslmode=disable"
	}
	return "sslmode=verify-full&sslrootcert=" + url.QueryEscape(s.cfg.TLS.CAFile)
}

// InstanceDSN connects straight to one instance.
func (s *Shard) InstanceDSN(name, user, db string) string {
	for _, m := range s.members {
		if m.Name == name {
			return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?%s", user, m.Port, db, s.sslParams())
		}
	}
	return ""
}

// CurrentPrimary is the instance holding the primary role; "" during a failover.
func (s *Shard) CurrentPrimary() string { t, _ := s.loc.TargetPrimary(context.Background()); return t }

// Client returns a status API client for one instance.
func (s *Shard) Client(name string) *instance.Client {
	c, _ := s.fs.Instances[name].(*instance.Client)
	return c
}

// Primary publishes the primary role: the locator the managers read and the proxy
// clients use. It implements failover.Publisher.
func (s *Shard) Primary(_ context.Context, name string) error {
	if err := s.loc.set(name); err != nil {
		return err
	}
	port := 0
	for _, m := range s.members {
		if m.Name == name {
			port = m.Port
		}
	}
	s.proxy.setTarget(port)
	return nil
}

// statusAddr is the host:port of a member's status API.
func statusAddr(m instance.Member) string {
	_, addr, _ := strings.Cut(m.StatusURL, "://")
	return addr
}

// Restart starts (or starts again) one instance's manager on its data directory, as
// a pod coming back would.
func (s *Shard) Restart(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.runs[name]; r != nil {
		return fmt.Errorf("localshard: %s is running", name)
	}
	var self instance.Member
	for _, m := range s.members {
		if m.Name == name {
			self = m
		}
	}
	if self.Name == "" {
		return fmt.Errorf("localshard: no instance %s", name)
	}
	stateDir := filepath.Join(s.cfg.Dir, name)
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return fmt.Errorf("localshard: %w", err)
	}
	_ = os.Chmod(stateDir, 0o755)
	mgr, err := instance.New(instance.Config{
		Name: name, DataDir: filepath.Join(stateDir, "pgdata"), Port: self.Port, Members: s.members,
		Sync: s.cfg.Sync, Token: s.token, Bootstrap: s.cfg.Bootstrap, Locator: s.loc,
		Tick: s.cfg.Tick, Log: s.cfg.Log, TLS: s.cfg.TLS,
		Params: map[string]string{"max_connections": "200", "shared_buffers": "64MB"},
	})
	if err != nil {
		return err
	}
	ln, held := s.held[name]
	delete(s.held, name)
	if !held {
		if ln, err = net.Listen("tcp", statusAddr(self)); err != nil {
			return fmt.Errorf("localshard: status listener of %s: %w", name, err)
		}
	}
	if s.cfg.TLS != nil {
		ln = tls.NewListener(ln, pki.ServerConfig(s.cfg.TLS.CertFile, s.cfg.TLS.KeyFile))
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := newGate()
	r := &run{mgr: mgr, cancel: cancel, done: make(chan struct{}), dataDir: filepath.Join(stateDir, "pgdata"), gate: g,
		srv: &http.Server{Handler: g.wrap(mgr.Handler()), ReadHeaderTimeout: 5 * time.Second}}
	go func() { _ = r.srv.Serve(ln) }()
	go func() { defer close(r.done); _ = mgr.Run(ctx) }()
	s.runs[name] = r
	return nil
}

// Kill loses one instance as a pod is lost: PostgreSQL gets SIGKILL and its manager and
// status API vanish. Restart brings it back.
func (s *Shard) Kill(name string) {
	if r := s.take(name); r != nil {
		r.mgr.Kill()
		r.stop()
	}
}

// Freeze hangs one instance as a frozen pod hangs: PostgreSQL and every one of its
// processes get SIGSTOP (their connections stay open), and its status API accepts
// connections but answers nothing. Thaw resumes it.
func (s *Shard) Freeze(name string) error { return s.signal(name, syscall.SIGSTOP, true) }

// Thaw resumes an instance Freeze hung.
func (s *Shard) Thaw(name string) error { return s.signal(name, syscall.SIGCONT, false) }

// signal sends sig to the instance's postmaster and all its children, and sets the gate
// of its status API.
func (s *Shard) signal(name string, sig syscall.Signal, frozen bool) error {
	s.mu.Lock()
	r := s.runs[name]
	s.mu.Unlock()
	if r == nil {
		return fmt.Errorf("localshard: %s is not running", name)
	}
	pids, err := postgres.ProcessTree(r.dataDir)
	if err != nil {
		return err
	}
	if frozen {
		r.gate.set(true)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("localshard: signal %d: %w", pid, err)
		}
	}
	if !frozen {
		r.gate.set(false)
	}
	return nil
}

// StopInstance shuts one instance down cleanly (its manager stops PostgreSQL).
func (s *Shard) StopInstance(name string) {
	if r := s.take(name); r != nil {
		r.stop()
	}
}

// take removes an instance's run from the shard, returning nil if it is not running.
func (s *Shard) take(name string) *run {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[name]
	delete(s.runs, name)
	return r
}

// stop ends the manager (a clean PostgreSQL shutdown, unless it was killed) and its
// status API.
func (r *run) stop() {
	r.cancel()
	<-r.done
	_ = r.srv.Close()
}

// Switchover hands the primary role to target; the control loop pauses meanwhile.
func (s *Shard) Switchover(ctx context.Context, target string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := failover.Switchover(ctx, s.fs, target)
	return err
}

// WaitReady waits until the current primary takes writes and every running replica
// streams from it.
func (s *Shard) WaitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		primary := s.CurrentPrimary()
		obs := s.fs.Observe(ctx)
		ready := primary != ""
		for _, o := range obs {
			s.mu.Lock()
			_, running := s.runs[o.Name]
			s.mu.Unlock()
			if !running {
				continue
			}
			switch {
			case o.Status == nil || !o.Status.Running:
				ready = false
			case o.Name == primary:
				ready = ready && o.Status.Role == instance.RolePrimary
			default:
				ready = ready && o.Status.Role == instance.RoleReplica && o.Status.WALReceiver == "streaming" && o.Status.Upstream == primary
			}
		}
		if ready {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("localshard: not ready after %s (primary %q): %s", timeout, primary, describe(obs))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func describe(obs []failover.Observation) string {
	out := ""
	for _, o := range obs {
		if o.Status == nil {
			out += fmt.Sprintf("[%s: no answer] ", o.Name)
			continue
		}
		st := o.Status
		out += fmt.Sprintf("[%s: running=%v role=%q fenced=%v receiver=%q upstream=%q wal=%s tli=%d %s] ",
			o.Name, st.Running, st.Role, st.Fenced, st.WALReceiver, st.Upstream, st.WAL, st.Timeline, st.Error)
	}
	return out
}

// Observe reports every instance's status.
func (s *Shard) Observe(ctx context.Context) []failover.Observation { return s.fs.Observe(ctx) }

// control is the operator's failover part: fail over a lost primary, and bring every
// instance back to following the primary.
func (s *Shard) control(ctx context.Context) {
	defer close(s.loopDone)
	var downSince time.Time
	for round := 0; ; round++ {
		select {
		case <-ctx.Done():
			return
		case <-time.After(controlInterval):
		}
		s.mu.Lock()
		obs := s.fs.Observe(ctx)
		var primary failover.Observation
		for _, o := range obs {
			if o.Name == s.fs.Primary {
				primary = o
			}
		}
		now := time.Now()
		healthy := failover.PrimaryHealthy(primary)
		switch {
		case healthy:
			downSince = time.Time{}
			if round%convergeEvery == 0 {
				s.fs.Converge(ctx, obs)
			}
		case downSince.IsZero():
			downSince = now
		case failover.PrimaryLost(primary, downSince, now, s.cfg.FailoverDelay):
			if _, err := failover.Failover(ctx, s.fs, obs); err != nil && ctx.Err() == nil {
				s.cfg.Log.Warn("failover did not complete; will retry", "err", err.Error())
			}
			downSince = time.Time{}
		}
		s.mu.Unlock()
	}
}

// Stop shuts every instance down cleanly and closes the proxy.
func (s *Shard) Stop() {
	if s.stopLoop != nil {
		s.stopLoop()
		<-s.loopDone
	}
	s.mu.Lock()
	s.releaseHeld()
	names := make([]string, 0, len(s.runs))
	for name := range s.runs {
		names = append(names, name)
	}
	s.mu.Unlock()
	for _, name := range names {
		s.StopInstance(name)
	}
	s.proxy.close()
}

// releaseHeld closes the status listeners no manager has taken (s.mu held, or not yet
// shared).
func (s *Shard) releaseHeld() {
	for name, ln := range s.held {
		ln.Close()
		delete(s.held, name)
	}
}
