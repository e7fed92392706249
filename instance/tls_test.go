package instance_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/localshard"
	"github.com/tallyhq/tally/internal/pki"
	"github.com/tallyhq/tally/internal/postgres"
)

// certFiles writes a CA and a server certificate for loopback, as the operator's Secret
// holds them, and returns the files and a way to renew the certificate in place.
func certFiles(t *testing.T) (*instance.TLS, func() *big.Int) {
	t.Helper()
	f, err := pki.WriteFiles(openDir(t), []string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &instance.TLS{CertFile: f.CertFile, KeyFile: f.KeyFile, CAFile: f.CAFile}, func() *big.Int {
		c, err := f.Renew(time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return c.SerialNumber
	}
}

// serverSerial connects with verify-full and returns the serial of the certificate the
// server presented, and whether the session is encrypted as PostgreSQL sees it.
func serverSerial(ctx context.Context, dsn string) (*big.Int, bool, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, false, err
	}
	var serial atomic.Pointer[big.Int]
	cfg.TLSConfig.VerifyConnection = func(cs tls.ConnectionState) error {
		serial.Store(cs.PeerCertificates[0].SerialNumber)
		return nil
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, false, err
	}
	defer conn.Close(ctx)
	var ssl bool
	err = conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl)
	return serial.Load(), ssl, err
}

// TestShardOverTLS runs a primary and a synchronous replica with certificates: clients
// verify the server, replication is encrypted, the status APIs serve HTTPS only, a
// renewed certificate is served without a restart, and a failover and the old
// primary's rejoining (pg_rewind verifying its source) work over TLS.
func TestShardOverTLS(t *testing.T) {
	ctx := context.Background()
	files, renew := certFiles(t)
	dir := openDir(t)
	sh, err := localshard.Start(ctx, localshard.Config{
		Dir: dir, Instances: 2, Sync: instance.SyncRule{Method: instance.SyncAny, Number: 1}, TLS: files,
		Tick: 200 * time.Millisecond, FailoverDelay: time.Second, Log: slog.New(slog.NewTextHandler(testLog(t), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sh.Stop()
	dsn := sh.DSN("postgres", "postgres") // verify-full against the CA
	if !strings.Contains(dsn, "sslmode=verify-full") {
		t.Fatalf("the shard DSN does not verify: %s", dsn)
	}
	first, ssl, err := serverSerial(ctx, dsn)
	if err != nil || !ssl || first == nil {
		t.Fatalf("a verified connection: serial %v, ssl %v, %v", first, ssl, err)
	}
	replicationEncrypted := func() {
		t.Helper()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		var all bool
		if err := conn.QueryRow(ctx, `SELECT count(*), coalesce(bool_and(s.ssl), false) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)`).Scan(&n, &all); err != nil || n != 1 || !all {
			t.Errorf("replication: %d standbys, all over TLS %v, %v", n, all, err)
		}
	}
	replicationEncrypted()
	// The status API answers HTTPS only.
	statusURL := sh.Members()[0].StatusURL
	if resp, err := http.Get("http" + statusURL[len("https"):] + "/healthz"); err == nil {
		if resp.StatusCode == http.StatusOK {
			t.Error("the status API answered plain HTTP")
		}
		resp.Body.Close()
	}
	if _, err := sh.Client(sh.CurrentPrimary()).Status(ctx); err != nil {
		t.Errorf("status over HTTPS: %v", err)
	}

	// Renewal: new connections get the new certificate, with no restart.
	next := renew()
	deadline := time.Now().Add(time.Minute)
	for {
		got, _, err := serverSerial(ctx, dsn)
		if err == nil && got.Cmp(next) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the renewed certificate is not served: serial %v, %v", got, err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A failover, and the old primary back as a replica.
	old := sh.CurrentPrimary()
	sh.Kill(old)
	deadline = time.Now().Add(2 * time.Minute)
	for sh.CurrentPrimary() == old || sh.CurrentPrimary() == "" {
		if time.Now().After(deadline) {
			t.Fatal("no failover")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := sh.Restart(old); err != nil {
		t.Fatal(err)
	}
	if err := sh.WaitReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	replicationEncrypted()
}

// testLog collects the managers' log, shown when the test fails.
func testLog(t *testing.T) io.Writer {
	f, err := os.Create(filepath.Join(t.TempDir(), "managers.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(f.Name())
			t.Logf("instance managers' log:\n%s", b)
		}
		f.Close()
	})
	return f
}

// openDir is a temporary directory postgres may enter when it runs as another OS user.
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tally-tls-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// fixedLocator names one primary.
type fixedLocator string

func (l fixedLocator) TargetPrimary(context.Context) (string, error) { return string(l), nil }

// TestTLSIsRequiredFromOutsideThePod: with passwords (as on Kubernetes), a connection
// from outside the pod in the clear is refused, even with the right password; over TLS
// it is let in. (Loopback inside the pod, 127.0.0.1, stays trusted for the manager.)
func TestTLSIsRequiredFromOutsideThePod(t *testing.T) {
	ctx := context.Background()
	files, _ := certFiles(t)
	port, err := postgres.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	m, err := instance.New(instance.Config{
		Name: "a", DataDir: filepath.Join(openDir(t), "pgdata"), Port: port, Listen: "127.0.0.1,127.0.0.2", Token: "s3cret",
		Locator: fixedLocator("a"), Members: []instance.Member{{Name: "a", Host: "127.0.0.1", Port: port}},
		SuperuserPassword: "super-secret", ReplicationPassword: "repl-secret", TLS: files,
		Tick: 100 * time.Millisecond, Log: slog.New(slog.NewTextHandler(testLog(t), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = m.Run(runCtx) }()
	defer func() { cancel(); <-done }()
	// From 127.0.0.2, which the rules do not trust as the pod's own loopback.
	connect := func(sslmode string) error {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres:super-secret@127.0.0.2:%d/postgres?sslmode=%s&sslrootcert=%s&connect_timeout=5", port, sslmode, files.CAFile))
		if err != nil {
			return err
		}
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
		cfg.DialFunc = d.DialContext
		cfg.Host = "127.0.0.2"
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			conn.Close(ctx)
		}
		return err
	}
	deadline := time.Now().Add(2 * time.Minute)
	for connect("require") != nil {
		if time.Now().After(deadline) {
			t.Fatalf("no TLS connection from outside: %v", connect("require"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := connect("disable"); err == nil || !strings.Contains(err.Error(), "no encryption") {
		t.Errorf("a connection in the clear from outside: %v, want refused", err)
	}
}
