package controllers_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// TestSampleIsAValidCluster applies the LedgerCluster in config/samples to the real API
// server: every field must be known and every CEL rule must pass.
func TestSampleIsAValidCluster(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repoRoot(), "config", "samples", "ledger_v1alpha1_ledgercluster.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	doc := strings.Split(string(raw), "\n---\n")[0]
	var c v1alpha1.LedgerCluster
	if err := yaml.UnmarshalStrict([]byte(doc), &c); err != nil {
		t.Fatalf("sample: %v", err)
	}
	c.Namespace = newNamespace(t)
	if err := k8s.Create(ctx, &c); err != nil {
		t.Fatalf("the API server rejects the sample: %v", err)
	}
	var shard v1alpha1.LedgerShard
	waitFor(t, c.Namespace, "payments-1", &shard)
}
