package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
)

// ClientConfig verifies servers against the CA in file, read again for each
// connection, so a new CA is trusted without a restart.
func ClientConfig(caFile string) *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyConnection, which checks chain and name against the current CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			bundle, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("read the CA: %w", err)
			}
			pool, err := Pool(bundle)
			if err != nil {
				return err
			}
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the server sent no certificate")
			}
			opts := x509.VerifyOptions{Roots: pool, DNSName: cs.ServerName, Intermediates: x509.NewCertPool()}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(opts)
			return err
		}}
}

// ServerConfig serves the certificate in the files, read again when they change, so a
// renewed certificate is served without a restart.
func ServerConfig(certFile, keyFile string) *tls.Config {
	var (
		mu     sync.Mutex
		loaded *tls.Certificate
		from   []byte
	)
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert, err := os.ReadFile(certFile)
		if err != nil {
			return nil, err
		}
		mu.Lock()
		defer mu.Unlock()
		if loaded != nil && bytes.Equal(cert, from) {
			return loaded, nil
		}
		key, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, err
		}
		pair, err := tls.X509KeyPair(cert, key)
		if err != nil {
			if loaded != nil {
				return loaded, nil // half-updated: serve the last good pair until both files agree
			}
			return nil, err
		}
		loaded, from = &pair, cert
		return loaded, nil
	}}
}
