package failover_test

import (
	"context"
	"crypto/tls"
	"math/big"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/pki"
)

// TestCertificateRenewalUnderLoad renews the shard's certificate while transfers flow
// over verified TLS connections, and has every client connection reopened on it: no
// transfer fails, and every acknowledged one is there.
func TestCertificateRenewalUnderLoad(t *testing.T) {
	dir, err := os.MkdirTemp("", "tally-certs-")
	if err != nil {
		t.Fatal(err)
	}
	_ = os.Chmod(dir, 0o755) // postgres may run as another OS user
	t.Cleanup(func() { os.RemoveAll(dir) })
	files, err := pki.WriteFiles(dir, []string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	h := startHALedgerTLS(t, 0, 2, anyOneRequired, time.Second, &instance.TLS{CertFile: files.CertFile, KeyFile: files.KeyFile, CAFile: files.CAFile})
	ctx := context.Background()
	l := h.startLoad(4)
	l.markFault()
	l.waitForWriteAfterFault(t, time.Minute)
	renewed, err := files.Renew(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Every instance serves the new certificate (the managers reload it on their next
	// tick), then every pooled connection is replaced by one that verified it.
	primary := h.shard.CurrentPrimary()
	deadline := time.Now().Add(time.Minute)
	for {
		conn, err := h.pool.Acquire(ctx)
		if err == nil {
			conn.Release()
		}
		serving := h.servedSerial(ctx, primary)
		if serving != nil && serving.Cmp(renewed.SerialNumber) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the renewed certificate is not served: %v", serving)
		}
		time.Sleep(100 * time.Millisecond)
	}
	h.pool.Reset()
	l.markFault()
	l.waitForWriteAfterFault(t, time.Minute)
	acked := l.finish()
	if n := l.failed.Load(); n != 0 {
		t.Errorf("%d transfers failed across the renewal (last error: %v)", n, l.lastError.Load())
	}
	h.checkLedger(ctx, primary, acked)
}

// servedSerial is the serial of the certificate the instance presents to a new
// connection, or nil if none could be made.
func (h *haLedger) servedSerial(ctx context.Context, name string) *big.Int {
	cfg, err := pgx.ParseConfig(h.shard.InstanceDSN(name, "postgres", database))
	if err != nil || cfg.TLSConfig == nil {
		h.t.Fatalf("the instance DSN does not use TLS: %v", err)
	}
	var serial *big.Int
	cfg.TLSConfig.VerifyConnection = func(cs tls.ConnectionState) error {
		serial = cs.PeerCertificates[0].SerialNumber
		return nil
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil
	}
	conn.Close(ctx)
	return serial
}
