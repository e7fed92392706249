// Package redistest gives tests a real Redis: a redis-server process per test, in a
// temporary directory on a free loopback port, which the test may kill, pause and
// restart to play the faults a cache meets.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/internal/redisconn"
)

// Server is a redis-server the test started.
type Server struct {
	t    testing.TB
	dir  string
	port int
	cmd  *exec.Cmd
	done <-chan struct{}
}

// Start runs redis-server for the test; it stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatal("redistest: redis-server is not installed; hack/ensure-deps.sh installs it")
	}
	s := &Server{t: t, dir: t.TempDir()}
	for tries := 1; ; tries++ {
		port, err := postgres.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		s.port = port
		s.cmd, s.done, err = Launch(s.dir, port)
		if err == nil {
			break
		}
		if !errors.Is(err, errPortTaken) || tries == 3 {
			t.Fatal(err)
		}
	}
	t.Cleanup(s.Kill)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// Restart starts the server again (on the same port and directory, so with the
// snapshot it saved, if any) once it has stopped, and waits until it answers.
func (s *Server) Restart() {
	s.t.Helper()
	cmd, done, err := Launch(s.dir, s.port)
	if err != nil {
		s.t.Fatal(err)
	}
	s.cmd, s.done = cmd, done
}

// Launch runs a redis-server on 127.0.0.1:port, with no persistence beyond an explicit
// SAVE and its files in dir, and waits until it answers (a minute at most: only a server
// that never answers fails). done closes when the process has ended.
func Launch(dir string, port int) (cmd *exec.Cmd, done <-chan struct{}, err error) {
	cmd = exec.Command("redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--appendonly", "no", "--protected-mode", "no")
	log, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		return nil, nil, fmt.Errorf("redistest: %w", err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, nil, fmt.Errorf("redistest: start redis-server: %w", err)
	}
	ended := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(ended) }()
	c := redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))})
	defer c.Close()
	deadline := time.Now().Add(time.Minute)
	for {
		// The server answering must be this one: another process may have taken the port
		// between FreePort and the bind.
		info, err := c.Info(context.Background(), "server").Result()
		if err == nil && strings.Contains(info, "process_id:"+strconv.Itoa(cmd.Process.Pid)+"\r\n") {
			return cmd, ended, nil
		}
		select {
		case <-ended:
			b, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			return nil, nil, fmt.Errorf("%w: redis-server on port %d ended: %s", errPortTaken, port, b)
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			b, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			return nil, nil, fmt.Errorf("redistest: redis-server does not answer: %s", b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// errPortTaken says a server could not have its port.
var errPortTaken = errors.New("redistest: port taken")

// Kill stops the server with SIGKILL, as a crashed cache goes.
func (s *Server) Kill() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.done
}

// Pause stops the server's process (SIGSTOP): connections stay open and nothing
// answers, as a cache that hangs. Resume lets it go on.
func (s *Server) Pause() { s.signal(syscall.SIGSTOP) }

// Resume undoes Pause.
func (s *Server) Resume() { s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) {
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatal(fmt.Errorf("redistest: %v: %w", sig, err))
	}
}

// Client is a client of the server as the service makes one, with a cooldown short
// enough for tests; it closes when the test ends. Its Redis field is the plain client.
func (s *Server) Client() *redisconn.Client {
	s.t.Helper()
	opts, err := redisconn.Options("redis://"+s.Addr()+"/0", "")
	if err != nil {
		s.t.Fatal(err)
	}
	rdb := redis.NewClient(opts)
	c := redisconn.New(rdb, redisconn.NewBreaker(200*time.Millisecond, nil))
	s.t.Cleanup(func() { c.Close(); rdb.Close() })
	return c
}

// Save writes the server's snapshot (SAVE), which the next Restart loads: a restart
// after more writes plays a cache come back with old data.
func (s *Server) Save() {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	if err := c.Save(context.Background()).Err(); err != nil {
		s.t.Fatalf("redistest: save: %v", err)
	}
}

// FlushAll empties the server (FLUSHALL), as an operator clearing a cache does.
func (s *Server) FlushAll() {
	s.t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.Addr()})
	defer c.Close()
	if err := c.FlushAll(context.Background()).Err(); err != nil {
		s.t.Fatalf("redistest: flushall: %v", err)
	}
}
