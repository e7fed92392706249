package controllers_test

import (
	"errors"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/controllers/specs"
)

// makeNode registers a node, Ready or not; envtest runs no kubelet.
func makeNode(t *testing.T, name string, ready bool) {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Create(ctx, node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, node) })
	setNodeReady(t, name, ready)
}

func setNodeReady(t *testing.T, name string, ready bool) {
	t.Helper()
	status := corev1.ConditionTrue
	if !ready {
		status = corev1.ConditionUnknown
	}
	var node corev1.Node
	if err := k8s.Get(ctx, types.NamespacedName{Name: name}, &node); err != nil {
		t.Fatal(err)
	}
	node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status, LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if err := k8s.Status().Update(ctx, &node); err != nil {
		t.Fatal(err)
	}
}

// bind plays the scheduler: the pod runs on the node.
func bind(t *testing.T, ns, pod, node string) {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod}}
	if err := k8s.SubResource("binding").Create(ctx, p, &corev1.Binding{Target: corev1.ObjectReference{Kind: "Node", Name: node}}); err != nil {
		t.Fatalf("bind %s to %s: %v", pod, node, err)
	}
}

// Cordoning the primary's node (the first step of kubectl drain) moves the primary to a
// healthy replica on another node, so the drain's eviction of the old primary is no longer
// refused by the primary's disruption budget.
func TestCordonedPrimaryNodeSwitchesOver(t *testing.T) {
	ns, shard := haShard(t, "drain")
	p1 := specs.InstanceName(shard, 1)
	waitPrimary(t, ns, shard, p1)
	for n := int32(1); n <= 3; n++ {
		node := fmt.Sprintf("%s-node-%d", ns, n)
		makeNode(t, node, true)
		bind(t, ns, specs.InstanceName(shard, n), node)
		if n > 1 {
			markPodReady(t, ns, specs.InstanceName(shard, n))
		}
	}
	var node corev1.Node
	if err := k8s.Get(ctx, types.NamespacedName{Name: ns + "-node-1"}, &node); err != nil {
		t.Fatal(err)
	}
	node.Spec.Unschedulable = true
	if err := k8s.Update(ctx, &node); err != nil {
		t.Fatal(err)
	}
	eventually(t, "primary moved off the cordoned node", func() error {
		if st := shardStatus(t, ns, shard); st.CurrentPrimary == p1 || st.TargetPrimary == "" {
			return fmt.Errorf("primary %s, target %q", st.CurrentPrimary, st.TargetPrimary)
		}
		return nil
	})
	expectEvent(t, ns, "DrainSwitchover")
}

// A replica's pod left Terminating on a node that is not Ready (its kubelet will never
// confirm it gone) is deleted for good and created again, unbound, for the scheduler to
// place elsewhere.
func TestPodOnLostNodeIsReplaced(t *testing.T) {
	ns, shard := haShard(t, "lostnode")
	p2 := specs.InstanceName(shard, 2)
	node := ns + "-lost"
	makeNode(t, node, true)
	bind(t, ns, p2, node)
	var pod corev1.Pod
	if err := get(ns, p2, &pod); err != nil {
		t.Fatal(err)
	}
	oldUID := pod.UID
	setNodeReady(t, node, false)
	one := int64(1)
	if err := k8s.Delete(ctx, &pod, &client.DeleteOptions{GracePeriodSeconds: &one}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the stuck pod replaced", func() error {
		var p corev1.Pod
		if err := get(ns, p2, &p); err != nil {
			if apierrors.IsNotFound(err) {
				return errors.New("not yet re-created")
			}
			return err
		}
		if p.UID == oldUID {
			return fmt.Errorf("still the old pod, terminating since %v", p.DeletionTimestamp)
		}
		if p.Spec.NodeName != "" {
			return fmt.Errorf("re-created on %s", p.Spec.NodeName)
		}
		return nil
	})
	expectEvent(t, ns, "PodOnLostNodeDeleted")
}
