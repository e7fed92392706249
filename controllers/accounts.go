package controllers

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// countTimeout bounds one account count, so an unreachable shard cannot stall reconciles.
const countTimeout = 5 * time.Second

// AccountCounter counts the customer accounts a shard holds, for scale-down decisions.
type AccountCounter struct {
	// DSN returns a connection string for the shard's primary as a member of
	// tally_monitor, which may count accounts and do nothing else.
	DSN func(ctx context.Context, shard *v1alpha1.LedgerShard) (string, error)
	// Roots, when set, returns the CAs to verify a shard that serves TLS (nil: no TLS).
	Roots func(ctx context.Context, shard *v1alpha1.LedgerShard) (*x509.CertPool, error)
}

// Count connects to the shard's primary and counts its standard (customer) accounts.
func (a AccountCounter) Count(ctx context.Context, shard *v1alpha1.LedgerShard) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, countTimeout)
	defer cancel()
	dsn, err := a.DSN(ctx, shard)
	if err != nil {
		return 0, err
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, fmt.Errorf("count accounts of %s: %w", shard.Name, err)
	}
	if a.Roots != nil && shard.Spec.TLS.Enabled() && shard.Status.ServingTLS {
		roots, err := a.Roots(ctx, shard)
		if err != nil {
			return 0, err
		}
		// verify-full against the cluster's CA, not the operator image's system roots.
		cfg.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots, ServerName: cfg.Host}
		cfg.Fallbacks = nil
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("count accounts of %s: connect: %w", shard.Name, err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, "SELECT tally.count_accounts()").Scan(&n); err != nil {
		return 0, fmt.Errorf("count accounts of %s: %w", shard.Name, err)
	}
	return n, nil
}

// ShardRoots reads the CA of a shard's certificate from its Secret: how the operator
// verifies the shards when it runs inside the cluster.
func ShardRoots(c client.Client) func(ctx context.Context, shard *v1alpha1.LedgerShard) (*x509.CertPool, error) {
	return func(ctx context.Context, shard *v1alpha1.LedgerShard) (*x509.CertPool, error) {
		return shardRoots(ctx, c, shard)
	}
}

// ServiceDSN reaches a shard through its -rw Service with the monitor login's Secret:
// how the operator reaches shards when it runs inside the cluster. It never logs in as
// the superuser; until the migration Job has created the monitor login, a count fails
// and the shard is treated as holding accounts.
func ServiceDSN(c client.Client) func(ctx context.Context, shard *v1alpha1.LedgerShard) (string, error) {
	return func(ctx context.Context, shard *v1alpha1.LedgerShard) (string, error) {
		var secret corev1.Secret
		if err := c.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: specs.SecretMonitor(shard.Name)}, &secret); err != nil {
			return "", fmt.Errorf("monitor secret of %s: %w", shard.Name, err)
		}
		u := url.URL{
			Scheme: "postgres",
			User:   url.UserPassword(string(secret.Data[corev1.BasicAuthUsernameKey]), string(secret.Data[corev1.BasicAuthPasswordKey])),
			Host:   specs.ServiceRW(shard.Name) + "." + shard.Namespace + ".svc:" + strconv.Itoa(specs.PostgresPort),
			Path:   "/" + specs.Database,
		}
		return u.String() + "?sslmode=prefer", nil
	}
}
