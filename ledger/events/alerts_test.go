package events_test

import (
	"context"
	"os"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/yaml"

	"github.com/tallyhq/tally/ledger/events"
)

// TestAlertsNameTheRelaysMetrics: the shipped alerts parse, and every metric they read
// is one the relay exports (a renamed metric would silence an alert).
func TestAlertsNameTheRelaysMetrics(t *testing.T) {
	raw, err := os.ReadFile("../../config/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Kind string
		Spec struct {
			Groups []struct {
				Rules []struct{ Alert, Expr string }
			}
		}
	}
	if err := yaml.Unmarshal(raw, &rule); err != nil || rule.Kind != "PrometheusRule" {
		t.Fatalf("alerts.yaml: kind %q, %v", rule.Kind, err)
	}
	reg := prometheus.NewRegistry()
	m := events.NewMetrics(reg)
	exported := map[string]bool{}
	// a relay makes its shard's series as it starts (here it stops at once)
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := events.Run(done, events.Config{Metrics: m}); err != nil {
		t.Fatal(err)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		exported[f.GetName()] = true
	}
	n := 0
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			for _, name := range regexp.MustCompile(`tally_[a-z_]+`).FindAllString(r.Expr, -1) {
				n++
				if !exported[name] {
					t.Errorf("alert %s reads %s, which the relay does not export", r.Alert, name)
				}
			}
		}
	}
	if n == 0 {
		t.Error("no alert reads a Tally metric")
	}
}
