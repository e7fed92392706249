package pki

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Files are a CA and a server certificate in a directory, named as a mounted
// kubernetes.io/tls Secret names them: for servers run outside Kubernetes (tests, a
// local shard).
type Files struct {
	CAFile, CertFile, KeyFile string
	ca                        *CA
	names                     []string
}

// WriteFiles makes a CA and a server certificate for names in dir.
func WriteFiles(dir string, names []string, validFor time.Duration) (*Files, error) {
	ca, err := NewCA("tally local CA", 10*validFor, time.Now())
	if err != nil {
		return nil, err
	}
	f := &Files{CAFile: filepath.Join(dir, "ca.crt"), CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), ca: ca, names: names}
	if err := replace(f.CAFile, ca.CertPEM); err != nil {
		return nil, err
	}
	if _, err := f.Renew(validFor); err != nil {
		return nil, err
	}
	return f, nil
}

// Renew issues a new server certificate and replaces the files in place, key first
// (a reader that finds a key not matching the certificate keeps what it had).
func (f *Files) Renew(validFor time.Duration) (*x509.Certificate, error) {
	cert, key, err := f.ca.Issue(f.names, validFor, time.Now())
	if err != nil {
		return nil, err
	}
	if err := replace(f.KeyFile, key); err != nil {
		return nil, err
	}
	if err := replace(f.CertFile, cert); err != nil {
		return nil, err
	}
	return ParseCertificate(cert)
}

// replace writes a file atomically, readable by every local user (postgres may run as
// another one; these are local and test credentials).
func replace(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}
