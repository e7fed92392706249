package controllers_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/internal/pgtest"
)

const testImage = "registry.example/tally:test"

// The control plane, a manager running both reconcilers, and the map from shard to a real
// PostgreSQL database the account counter connects to, shared by the tests of this binary.
var (
	k8s             client.Client
	cached          client.Reader // the manager's cache, as the reconcilers read
	operatorMetrics = prometheus.NewRegistry()
	scheme          = k8sruntime.NewScheme()
	shardDSNs       sync.Map // "namespace/shard" -> DSN
	countSeen       sync.Map // "namespace/shard" -> func(*v1alpha1.LedgerShard), told of each count
	counter         = controllers.AccountCounter{DSN: func(_ context.Context, s *v1alpha1.LedgerShard) (string, error) {
		if seen, ok := countSeen.Load(s.Namespace + "/" + s.Name); ok {
			seen.(func(*v1alpha1.LedgerShard))(s)
		}
		if dsn, ok := shardDSNs.Load(s.Namespace + "/" + s.Name); ok {
			return dsn.(string), nil
		}
		return "", fmt.Errorf("no database for shard %s", s.Name)
	}}
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		// Build or reuse the control plane binaries, as `make test` does.
		cmd := exec.Command(filepath.Join(repoRoot(), "hack", "envtest-binaries.sh"))
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			fmt.Fprintln(os.Stderr, "envtest binaries:", err)
			return 1
		}
		os.Setenv("KUBEBUILDER_ASSETS", strings.TrimSpace(string(out)))
	}
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapLevelError())))
	_ = clientgoscheme.AddToScheme(scheme)
	_ = v1alpha1.AddToScheme(scheme)
	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join(repoRoot(), "config", "crd", "bases"), filepath.Join(repoRoot(), "controllers", "testdata", "crds")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "envtest:", err)
		return 1
	}
	defer env.Stop() //nolint:errcheck
	k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, "client:", err)
		return 1
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{Scheme: scheme, Metrics: metricsserver.Options{BindAddress: "0"}, Cache: controllers.CacheOptions()})
	if err != nil {
		fmt.Fprintln(os.Stderr, "manager:", err)
		return 1
	}
	cached = mgr.GetCache()
	if err := controllers.Setup(mgr, controllers.Options{
		Image: testImage, Accounts: counter, Registry: operatorMetrics,
		Instances: fakes.dial, FailoverDelay: testFailoverDelay, LostNodeGrace: time.Millisecond,
	}); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager stopped:", err)
		}
	}()
	return pgtest.Run(m)
}

// newNamespace gives each test its own namespace.
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "t-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// eventually polls cond until it returns nil or the time is up: two minutes, so that only
// something that never happens fails, however busy the machine.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}
