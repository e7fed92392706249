package pki_test

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"github.com/tallyhq/tally/internal/pki"
)

func TestIssueAndRenew(t *testing.T) {
	now := time.Now()
	ca, err := pki.NewCA("tally test CA", 365*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	again, err := pki.ParseCA(ca.CertPEM, ca.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"pay-0-rw.money.svc", "127.0.0.1"}
	certPEM, keyPEM, err := again.Issue(names, 90*24*time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	// The pair serves TLS, and a client trusting the CA verifies it for each name.
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pki.Pool(ca.CertPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(pair.Certificate[0])
	for _, n := range append(names, "elsewhere.svc") {
		_, err := leaf.Verify(x509.VerifyOptions{DNSName: n, Roots: pool})
		if (err == nil) != (n != "elsewhere.svc") {
			t.Errorf("verify for %s: %v", n, err)
		}
	}
	for when, want := range map[time.Time]bool{now: false, now.Add(59 * 24 * time.Hour): false, now.Add(61 * 24 * time.Hour): true} {
		if got := ca.Renew(certPEM, names, when) != ""; got != want {
			t.Errorf("renew at +%s: %v, want %v", when.Sub(now), got, want)
		}
	}
	if ca.Renew(certPEM, append(names, "pay-0-ro.money.svc"), now) == "" {
		t.Error("a certificate missing a name was kept")
	}
	other, _ := pki.NewCA("another CA", time.Hour, now)
	if ca.Renew(certPEM, names, now) != "" || other.Renew(certPEM, names, now) == "" || ca.Renew([]byte("junk"), names, now) == "" {
		t.Error("a certificate of another CA, or junk, was kept")
	}
	// Never valid past the CA.
	short, _ := pki.NewCA("short CA", time.Hour, now)
	c, _, _ := short.Issue(names, 90*24*time.Hour, now)
	if cert, _ := pki.ParseCertificate(c); cert.NotAfter.After(now.Add(time.Hour)) {
		t.Errorf("outlives its CA: %s", cert.NotAfter)
	}
	if !short.RenewCA(now.Add(50*time.Minute)) || ca.RenewCA(now) {
		t.Error("RenewCA")
	}
	if _, err := pki.ParseCA(ca.CertPEM, other.KeyPEM); err == nil {
		t.Error("a CA with another's key parsed")
	}
}
