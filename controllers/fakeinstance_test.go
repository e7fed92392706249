package controllers_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/failover"
	"github.com/tallyhq/tally/instance"
)

// testFailoverDelay keeps failover tests quick.
const testFailoverDelay = 500 * time.Millisecond

// fakeInstances plays the instance managers of every pod the operator dials: envtest
// runs no pods. Each simulated manager starts as what its pod's role label says and then
// does what the operator tells it; a replica streams exactly when its upstream is a
// running, reachable primary, as a real one would.
type fakeInstances struct {
	mu    sync.Mutex
	byPod map[string]*fakeInstance // "namespace/pod"
}

type fakeInstance struct {
	set        *fakeInstances
	ns, name   string
	down       bool // the manager does not answer
	refuse     bool // the manager answers but refuses to promote
	stuck      bool // a replica whose WAL receiver still streams, whatever its upstream does, until detached
	st         instance.Status
	promotions int
}

var fakes = &fakeInstances{byPod: map[string]*fakeInstance{}}

func (f *fakeInstances) dial(_ context.Context, shard *v1alpha1.LedgerShard, pod *corev1.Pod) (failover.Instance, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key := pod.Namespace + "/" + pod.Name
	if fi := f.byPod[key]; fi != nil {
		return fi, nil
	}
	fi := &fakeInstance{set: f, ns: pod.Namespace, name: pod.Name, st: instance.Status{Name: pod.Name, Running: true, Timeline: 1, WAL: 1000}}
	if pod.Labels[specs.LabelRole] == string(v1alpha1.RolePrimary) {
		fi.st.Role = instance.RolePrimary
	} else {
		fi.st.Role = instance.RoleReplica
		fi.st.Upstream = shard.Status.CurrentPrimary
		if fi.st.Upstream == "" {
			fi.st.Upstream = specs.InstanceName(shard.Name, 1)
		}
	}
	f.byPod[key] = fi
	return fi, nil
}

// get returns the simulated manager of a pod, dialled or not yet.
func (f *fakeInstances) get(ns, pod string) *fakeInstance {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.byPod[ns+"/"+pod]
}

// update changes a simulated manager under the lock.
func (f *fakeInstances) update(ns, pod string, change func(*fakeInstance)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if fi := f.byPod[ns+"/"+pod]; fi != nil {
		change(fi)
	}
}

func (fi *fakeInstance) Status(context.Context) (instance.Status, error) {
	fi.set.mu.Lock()
	defer fi.set.mu.Unlock()
	if fi.down {
		return instance.Status{}, errors.New("connection refused")
	}
	st := fi.st
	st.Standbys = slices.Clone(st.Standbys) // a real manager's answer shares nothing with it
	st.WALReceiver = ""
	if st.Running && st.Role == instance.RoleReplica {
		if up := fi.set.byPod[fi.ns+"/"+st.Upstream]; fi.stuck && st.Upstream != "" || up != nil && !up.down && up.st.Running && up.st.Role == instance.RolePrimary {
			st.WALReceiver = "streaming"
		}
	}
	return st, nil
}

func (fi *fakeInstance) act(change func()) error {
	fi.set.mu.Lock()
	defer fi.set.mu.Unlock()
	if fi.down {
		return errors.New("connection refused")
	}
	change()
	return nil
}

func (fi *fakeInstance) Promote(context.Context) error {
	fi.set.mu.Lock()
	refuse := fi.refuse
	fi.set.mu.Unlock()
	if refuse {
		return errors.New("promotion refused")
	}
	return fi.act(func() {
		fi.st.Role, fi.st.Upstream, fi.st.Timeline = instance.RolePrimary, "", fi.st.Timeline+1
		fi.promotions++
	})
}

func (fi *fakeInstance) Fence(context.Context) error {
	return fi.act(func() { fi.st.Fenced, fi.st.Running = true, false })
}

func (fi *fakeInstance) Follow(_ context.Context, primary string) error {
	return fi.act(func() {
		fi.st.Fenced, fi.st.Running, fi.st.Role, fi.st.Upstream = false, true, instance.RoleReplica, primary
	})
}

func (fi *fakeInstance) Detach(context.Context) error {
	return fi.act(func() { fi.st.Upstream, fi.st.WALReceiver = "", "" })
}
