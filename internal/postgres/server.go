// Package postgres runs a local PostgreSQL server as a child process: find the
// binaries, initdb a data directory, start, wait until ready, stop. Tests, `tally dev`
// and the benchmark harness all start PostgreSQL through it.
package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Superuser is the bootstrap superuser initdb creates in every data directory.
const Superuser = "postgres"

// readyTimeout bounds how long Start waits for the server to accept connections.
const readyTimeout = 60 * time.Second

// unprivilegedUser is the OS account PostgreSQL runs as when we are root, because
// postgres refuses to run as root.
const unprivilegedUser = "postgres"

// FindBinDir locates the PostgreSQL server binaries: `pg_config --bindir` first, then
// the newest /usr/lib/postgresql/*/bin that holds initdb and postgres.
func FindBinDir() (string, error) {
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		dir := strings.TrimSpace(string(out))
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	for _, dir := range dirs {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", errors.New("postgres: no PostgreSQL server binaries found (tried pg_config --bindir and /usr/lib/postgresql/*/bin); install the 'postgresql' package")
}

func majorOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.IsDir() {
			return false
		}
	}
	return true
}

// Config describes one local server.
type Config struct {
	BinDir  string            // from FindBinDir when empty
	DataDir string            // created by Init when it does not hold a cluster yet
	Port    int               // a free loopback port is chosen when zero
	Params  map[string]string // extra postgresql.conf settings, passed as -c name=value
	LogFile string            // server log; DataDir/postgres.log when empty
	Listen  string            // listen_addresses; 127.0.0.1 when empty
	// NoInit refuses to start on a directory that holds no cluster instead of running
	// initdb: a replica's data comes from its primary, never from initdb.
	NoInit bool
	// DataChecksums makes initdb checksum every data page.
	DataChecksums bool
}

// Server is a running PostgreSQL child process.
type Server struct {
	cfg  Config
	cmd  *exec.Cmd
	done chan error
}

// Start initialises the data directory if needed and starts postgres on 127.0.0.1,
// returning once it accepts connections.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.BinDir == "" {
		dir, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		cfg.BinDir = dir
	}
	if cfg.Port == 0 {
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		cfg.Port = port
	}
	if cfg.LogFile == "" {
		cfg.LogFile = filepath.Join(cfg.DataDir, "postgres.log")
	}
	cred, err := processCredential()
	if err != nil {
		return nil, err
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1"
	}
	if cfg.NoInit && !HasCluster(cfg.DataDir) {
		return nil, fmt.Errorf("postgres: %s holds no cluster", cfg.DataDir)
	}
	if err := initDataDir(ctx, cfg, cred); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("postgres: open log: %w", err)
	}
	args := []string{"-D", cfg.DataDir, "-p", strconv.Itoa(cfg.Port),
		"-c", "listen_addresses=" + cfg.Listen, "-c", "unix_socket_directories=", "-c", "fsync=on"}
	keys := make([]string, 0, len(cfg.Params))
	for k := range cfg.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+cfg.Params[k])
	}
	// Not bound to ctx: the caller stops the server with Stop, so it can shut down cleanly.
	cmd := exec.Command(filepath.Join(cfg.BinDir, "postgres"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("postgres: start: %w", err)
	}
	s := &Server{cfg: cfg, cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait(); logf.Close() }()
	if err := s.waitReady(ctx); err != nil {
		_ = s.Stop()
		return nil, fmt.Errorf("%w (log: %s)", err, cfg.LogFile)
	}
	return s, nil
}

// HasCluster reports whether dir holds a complete PostgreSQL data directory.
func HasCluster(dir string) bool {
	for _, f := range []string{"PG_VERSION", "global/pg_control"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

// MakeDataDir creates dir (mode 0700) for the account postgres runs as.
func MakeDataDir(dir string) error {
	cred, err := processCredential()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("postgres: create data dir: %w", err)
	}
	if cred != nil {
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return fmt.Errorf("postgres: chown data dir: %w", err)
		}
	}
	return nil
}

// RunTool runs one of the PostgreSQL client programs in binDir (pg_basebackup,
// pg_rewind, ...) as the account postgres runs as, with extra environment variables,
// and returns its combined output.
func RunTool(ctx context.Context, binDir, name string, env []string, args ...string) ([]byte, error) {
	cred, err := processCredential()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("postgres: %s: %w: %s", name, err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

func initDataDir(ctx context.Context, cfg Config, cred *syscall.Credential) error {
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "PG_VERSION")); err == nil {
		return nil
	}
	if err := MakeDataDir(cfg.DataDir); err != nil {
		return err
	}
	args := []string{"-D", cfg.DataDir, "-U", Superuser, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"}
	if cfg.DataChecksums {
		args = append(args, "--data-checksums")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(cfg.BinDir, "initdb"), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("postgres: initdb %s: %w: %s", cfg.DataDir, err, out.String())
	}
	return nil
}

// processCredential returns the unprivileged account to run postgres as when this
// process is root, and nil otherwise.
func processCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(unprivilegedUser)
	if err != nil {
		return nil, fmt.Errorf("postgres: running as root needs the %q OS user to run the server as: %w", unprivilegedUser, err)
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
}

func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for {
		conn, err := pgx.Connect(ctx, s.DSN("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case err := <-s.done:
			s.done <- err
			return fmt.Errorf("postgres: server exited during start: %v", err)
		case <-ctx.Done():
			return fmt.Errorf("postgres: not ready after %s: %w", readyTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Port is the loopback TCP port the server listens on.
func (s *Server) Port() int { return s.cfg.Port }

// DataDir is the server's data directory.
func (s *Server) DataDir() string { return s.cfg.DataDir }

// DSN returns a connection string for the superuser to the named database.
func (s *Server) DSN(database string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", Superuser, s.cfg.Port, database)
}

// Stop shuts the server down with a fast shutdown (SIGINT) and waits for it to exit.
func (s *Server) Stop() error {
	_ = s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-s.done:
		s.done <- err
		return nil
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		return errors.New("postgres: server did not stop within 30s; killed")
	}
}

// Kill ends the server and every backend at once with SIGKILL, as losing its machine
// would, and waits for the postmaster to exit. Tests of crash and failover use it.
func (s *Server) Kill() {
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	_ = s.Wait()
}

// Pid is the postmaster's process id; it leads the process group of every backend.
func (s *Server) Pid() int { return s.cmd.Process.Pid }

// Exited reports whether the server process has exited.
func (s *Server) Exited() bool {
	select {
	case err := <-s.done:
		s.done <- err
		return true
	default:
		return false
	}
}

// Wait returns when the server process exits.
func (s *Server) Wait() error {
	err := <-s.done
	s.done <- err
	return err
}

// FreePort asks the kernel for a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("postgres: find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// ProcessTree lists the running postmaster of dataDir (from postmaster.pid) and every
// process descended from it.
func ProcessTree(dataDir string) ([]int, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return nil, fmt.Errorf("postgres: postmaster of %s: %w", dataDir, err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	root, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return nil, fmt.Errorf("postgres: postmaster.pid of %s: %w", dataDir, err)
	}
	children := map[int][]int{}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("postgres: list processes: %w", err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // exited meanwhile
		}
		// the command name may hold spaces and parentheses: fields follow the last ')'
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 {
			if ppid, err := strconv.Atoi(fields[1]); err == nil {
				children[ppid] = append(children[ppid], pid)
			}
		}
	}
	tree := []int{root}
	for i := 0; i < len(tree); i++ {
		tree = append(tree, children[tree[i]]...)
	}
	return tree, nil
}
