package cli

import (
	"context"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
)

// imageEnv names the operator's own image; the manifests set it from the Deployment.
const imageEnv = "TALLY_IMAGE"

func runManager(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("manager", out)
	metricsAddr := fs.String("metrics-bind-address", ":8080", "address of the metrics endpoint")
	probeAddr := fs.String("health-probe-bind-address", ":8081", "address of /healthz and /readyz")
	leaderElect := fs.Bool("leader-elect", true, "elect a leader, so only one replica reconciles")
	image := fs.String("image", os.Getenv(imageEnv), "the operator's own image, the default ledger image (default $"+imageEnv+")")
	failoverDelay := fs.Duration("failover-delay", controllers.DefaultFailoverDelay, "how long a primary must be lost before a failover")
	concurrency := fs.Int("max-concurrent-reconciles", controllers.DefaultMaxConcurrentReconciles, "shards reconciled at once")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *image == "" {
		return fmt.Errorf("give --image or set %s: the ledger and its migrations run the operator's image", imageEnv)
	}
	ctrl.SetLogger(zap.New())
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return err
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                        scheme,
		Metrics:                       metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:        *probeAddr,
		LeaderElection:                *leaderElect,
		LeaderElectionID:              "tally-operator.ledger.tally.dev",
		LeaderElectionReleaseOnCancel: true,
		Cache:                         controllers.CacheOptions(),
	})
	if err != nil {
		return fmt.Errorf("manager: %w", err)
	}
	if err := controllers.Setup(mgr, controllers.Options{
		Image: *image, Accounts: controllers.AccountCounter{DSN: controllers.ServiceDSN(mgr.GetClient()), Roots: controllers.ShardRoots(mgr.GetClient())},
		Registry: ctrlmetrics.Registry, Instances: controllers.StatusAPIDialer(mgr.GetClient()), FailoverDelay: *failoverDelay,
		MaxConcurrentReconciles: *concurrency, OperatorNamespace: os.Getenv("POD_NAMESPACE"),
	}); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	return mgr.Start(ctx)
}
