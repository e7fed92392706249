package cli

import (
	"os"
	"path/filepath"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/instance"
)

// The instance manager reads exactly what the operator writes into the shard ConfigMap.
func TestShardShapeFromOperatorConfigMap(t *testing.T) {
	five, two := int32(5), int32(2)
	shard := &v1alpha1.LedgerShard{
		ObjectMeta: metav1.ObjectMeta{Name: "pay-0", Namespace: "money"},
		Spec: v1alpha1.LedgerShardSpec{Cluster: "pay", Postgres: v1alpha1.PostgresSpec{
			Instances:   &five,
			Synchronous: &v1alpha1.SynchronousSpec{Method: v1alpha1.SynchronousFirst, Number: &two, DataDurability: v1alpha1.DurabilityPreferred},
		}},
	}
	dir := t.TempDir()
	for k, v := range specs.PostgresConfig(shard).Data {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	shape, err := readShardShape(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := instance.SyncRule{Method: instance.SyncFirst, Number: 2, Required: false}
	if shape.instances != 5 || shape.rule != want {
		t.Fatalf("got %+v", shape)
	}
	members := shardMembers("pay-0", "money", shape.instances, false)
	if len(members) != 5 || members[4].Name != "pay-0-5" || members[0].Host != "pay-0-1.pay-0-instances.money.svc" ||
		members[0].StatusURL != "http://pay-0-1.pay-0-instances.money.svc:8000" {
		t.Fatalf("members %+v", members)
	}
	if m := shardMembers("pay-0", "money", 1, true); m[0].StatusURL != "https://pay-0-1.pay-0-instances.money.svc:8000" {
		t.Fatalf("members with TLS %+v", m)
	}
	if err := os.WriteFile(filepath.Join(dir, "instances"), []byte("zero"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readShardShape(dir); err == nil {
		t.Fatal("a bad instance count: want an error")
	}
}
