package instance

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/tallyhq/tally/internal/pki"
)

// TLS names an instance's certificate files: on Kubernetes, a mounted Secret, which the
// kubelet updates in place when the operator renews it. With TLS, PostgreSQL accepts
// connections from outside the pod only over TLS, replication and the tools that copy
// from a peer verify the peer's certificate, and the status API serves HTTPS.
type TLS struct {
	CertFile, KeyFile string // the server certificate (its chain) and key, PEM
	CAFile            string // the CA that signs every instance's certificate, PEM
}

// The server certificate's copies in the data directory: PostgreSQL wants a key file
// that only its own user may read, which a mounted Secret is not.
const (
	serverCertFile = "server.crt"
	serverKeyFile  = "server.key"
)

// tlsSettings are the postgresql.conf lines that serve TLS.
func tlsSettings() string {
	return fmt.Sprintf("ssl = on\nssl_cert_file = '%s'\nssl_key_file = '%s'\nssl_min_protocol_version = 'TLSv1.2'\n", serverCertFile, serverKeyFile)
}

// installServerCert copies the certificate and key into the data directory when they
// differ from what is there, and reports whether they did (then a reload serves them).
func (m *Manager) installServerCert() (bool, error) {
	if m.cfg.TLS == nil {
		return false, nil
	}
	cert, err := os.ReadFile(m.cfg.TLS.CertFile)
	if err != nil {
		return false, fmt.Errorf("instance: read the server certificate: %w", err)
	}
	key, err := os.ReadFile(m.cfg.TLS.KeyFile)
	if err != nil {
		return false, fmt.Errorf("instance: read the server key: %w", err)
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil { // half-updated, or wrong: keep what serves
		return false, fmt.Errorf("instance: the server certificate and key do not make a pair: %w", err)
	}
	haveCert, _ := os.ReadFile(filepath.Join(m.cfg.DataDir, serverCertFile))
	haveKey, _ := os.ReadFile(filepath.Join(m.cfg.DataDir, serverKeyFile))
	if bytes.Equal(cert, haveCert) && bytes.Equal(key, haveKey) {
		return false, nil
	}
	if err := m.writeDataFile(serverKeyFile, string(key)); err != nil {
		return false, err
	}
	if err := m.writeDataFile(serverCertFile, string(cert)); err != nil {
		return false, err
	}
	return true, nil
}

// renewServerCert serves a renewed certificate: PostgreSQL reads its files again on
// reload, and only new connections use it.
func (m *Manager) renewServerCert(ctx context.Context) error {
	changed, err := m.installServerCert()
	if err != nil || !changed {
		return err
	}
	m.log.Info("serving a renewed server certificate")
	return m.reload(ctx)
}

// noClientCert is where libpq is told to find a client certificate, so that it does not
// look in ~/.postgresql of a HOME that may belong to another user: nothing is there.
func (m *Manager) noClientCert() string { return filepath.Join(m.stateDir(), "no-client-certificate") }

// peerTLSEnv makes libpq (pg_basebackup, pg_rewind) verify the peer's certificate.
func (m *Manager) peerTLSEnv() []string {
	if m.cfg.TLS == nil {
		return nil
	}
	return []string{"PGSSLMODE=verify-full", "PGSSLROOTCERT=" + m.cfg.TLS.CAFile, "PGSSLCERT=" + m.noClientCert(), "PGSSLKEY=" + m.noClientCert()}
}

// peerTLSConninfo is the conninfo that makes the manager's connections to a peer verify
// its certificate, or not use TLS without one.
func (m *Manager) peerTLSConninfo() string {
	if m.cfg.TLS == nil {
		return " sslmode=disable"
	}
	return " sslmode=verify-full sslrootcert=" + conninfoQuote(m.cfg.TLS.CAFile)
}

// replicationTLSConninfo is peerTLSConninfo for PostgreSQL's own replication
// connection (libpq, which looks for a client certificate unless told where).
func (m *Manager) replicationTLSConninfo() string {
	if m.cfg.TLS == nil {
		return ""
	}
	return m.peerTLSConninfo() + " sslcert=" + conninfoQuote(m.noClientCert()) + " sslkey=" + conninfoQuote(m.noClientCert())
}

// peerHTTPClient calls the peers' status APIs, trusting the shard's CA when there is TLS.
func peerHTTPClient(t *TLS, timeout time.Duration) *http.Client {
	c := &http.Client{Timeout: timeout}
	if t != nil {
		c.Transport = &http.Transport{TLSClientConfig: pki.ClientConfig(t.CAFile)}
	}
	return c
}
