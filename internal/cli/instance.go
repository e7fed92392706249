package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/pki"
	"github.com/tallyhq/tally/ledger/migrations"
)

// instanceShutdownGrace bounds the status server's shutdown.
const instanceShutdownGrace = 5 * time.Second

// runInstance is the main process of a PostgreSQL pod: it reads the pod's identity from
// the environment and the shard's shape from the mounted ConfigMap, learns the target
// primary from its LedgerShard, and runs the instance manager with its status API.
func runInstance(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("instance run", out)
	configDir := fs.String("config-dir", specs.ConfigMount, "the mounted shard ConfigMap (instances, synchronous, dataDurability, custom.conf)")
	statusListen := fs.String("status-listen", ":"+strconv.Itoa(specs.StatusPort), "address of the status API")
	if err := parse(fs, args); err != nil {
		return err
	}
	env := func(name string) (string, error) {
		v := os.Getenv(name)
		if v == "" {
			return "", fmt.Errorf("environment variable %s is not set", name)
		}
		return v, nil
	}
	var missing []string
	get := func(name string) string {
		v, err := env(name)
		if err != nil {
			missing = append(missing, name)
		}
		return v
	}
	pod, ns, shard, pgdata := get("POD_NAME"), get("NAMESPACE"), get("TALLY_SHARD"), get("PGDATA")
	token, superPw, appPw, replPw := get("TALLY_STATUS_TOKEN"), get("TALLY_SUPERUSER_PASSWORD"), get("TALLY_APP_PASSWORD"), get("TALLY_REPLICATION_PASSWORD")
	if len(missing) > 0 {
		return fmt.Errorf("missing environment: %s", strings.Join(missing, ", "))
	}
	shape, err := readShardShape(*configDir)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cdcPassword := os.Getenv(specs.CDCPasswordEnv)
	var tlsFiles *instance.TLS
	if dir := os.Getenv("TALLY_TLS_DIR"); dir != "" {
		tlsFiles = &instance.TLS{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), CAFile: filepath.Join(dir, "ca.crt")}
	}
	kube, err := kubeClient()
	if err != nil {
		return err
	}
	mgr, err := instance.New(instance.Config{
		Name: pod, DataDir: pgdata, Listen: "*", Port: specs.PostgresPort,
		Members: shardMembers(shard, ns, shape.instances, tlsFiles != nil), Sync: shape.rule, Token: token, TLS: tlsFiles,
		SuperuserPassword: superPw, ReplicationUser: specs.Replicator, ReplicationPassword: replPw,
		Bootstrap: instance.Bootstrap{Database: specs.Database, AppUser: specs.AppUser, AppPassword: appPw},
		Include:   filepath.Join(*configDir, "custom.conf"),
		// change data capture, when the shard asks for it (spec.cdc: its login's password)
		LogicalDecoding: cdcPassword != "",
		PrimarySetup:    cdcSetup(cdcPassword),
		Locator:         shardLocator{c: kube, key: types.NamespacedName{Namespace: ns, Name: shard}},
		Log:             log,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *statusListen)
	if err != nil {
		return fmt.Errorf("status API: %w", err)
	}
	if tlsFiles != nil {
		ln = tls.NewListener(ln, pki.ServerConfig(tlsFiles.CertFile, tlsFiles.KeyFile))
	}
	srv := &http.Server{Handler: mgr.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("status API stopped", "err", err.Error())
		}
	}()
	log.Info("instance manager running", "instance", pod, "shard", shard, "instances", shape.instances, "sync", fmt.Sprintf("%+v", shape.rule))
	go followShardShape(ctx, mgr, *configDir, shard, ns, tlsFiles != nil, shape, log)
	err = mgr.Run(ctx) // returns once ctx ends (SIGTERM), after a clean PostgreSQL shutdown
	sctx, cancel := context.WithTimeout(context.Background(), instanceShutdownGrace)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return err
}

// shapePoll is how often the mounted ConfigMap is read again; the kubelet refreshes it
// within about a minute of a change.
const shapePoll = 10 * time.Second

// followShardShape hands the manager a new instance count or synchronous rule when the
// ConfigMap changes, so synchronous_standby_names follows instances as they come and go.
func followShardShape(ctx context.Context, mgr *instance.Manager, dir, shard, ns string, tlsOn bool, have shardShape, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(shapePoll):
		}
		shape, err := readShardShape(dir)
		if err != nil {
			log.Warn("shard config unreadable; keeping the last one", "err", err.Error())
			continue
		}
		if shape == have {
			continue
		}
		if err := mgr.SetShape(shardMembers(shard, ns, shape.instances, tlsOn), shape.rule); err != nil {
			log.Warn("shard config not applied", "err", err.Error())
			continue
		}
		log.Info("shard config changed", "instances", shape.instances, "sync", fmt.Sprintf("%+v", shape.rule))
		have = shape
	}
}

// shardShape is what the shard ConfigMap tells every instance manager.
type shardShape struct {
	instances int
	rule      instance.SyncRule
}

func readShardShape(dir string) (shardShape, error) {
	read := func(name string) (string, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", fmt.Errorf("shard config: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	var s shardShape
	n, err := read("instances")
	if err != nil {
		return s, err
	}
	if s.instances, err = strconv.Atoi(n); err != nil || s.instances < 1 {
		return s, fmt.Errorf("shard config: instances %q is not a positive number", n)
	}
	sync, err := read("synchronous")
	if err != nil {
		return s, err
	}
	durability, err := read("dataDurability")
	if err != nil {
		return s, err
	}
	s.rule, err = instance.ParseSyncRule(sync, durability == string(v1alpha1.DurabilityRequired))
	return s, err
}

// shardMembers lists a shard's instances as their peers reach them: through the
// headless -instances Service, which names every pod, ready or not (and which the
// shard's certificate names).
func shardMembers(shard, ns string, n int, tlsOn bool) []instance.Member {
	scheme := "http://"
	if tlsOn {
		scheme = "https://"
	}
	members := make([]instance.Member, 0, n)
	for i := 1; i <= n; i++ {
		name := specs.InstanceName(shard, int32(i))
		host := fmt.Sprintf("%s.%s.%s.svc", name, specs.ServiceInstances(shard), ns)
		members = append(members, instance.Member{
			Name: name, Host: host, Port: specs.PostgresPort,
			StatusURL: scheme + net.JoinHostPort(host, strconv.Itoa(specs.StatusPort)),
		})
	}
	return members
}

func kubeClient() (client.Client, error) {
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes config: %w", err)
	}
	scheme := runtime.NewScheme()
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, nil
}

// shardLocator reads the target primary from the shard's status, where the operator
// publishes it. An unreachable API server is an error, which an isolated primary counts
// towards fencing itself.
type shardLocator struct {
	c   client.Client
	key types.NamespacedName
}

// TargetPrimary reads the shard's status.targetPrimary through the instance's own Role.
func (l shardLocator) TargetPrimary(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var shard v1alpha1.LedgerShard
	if err := l.c.Get(ctx, l.key, &shard); err != nil {
		return "", fmt.Errorf("read LedgerShard %s: %w", l.key, err)
	}
	return shard.Status.TargetPrimary, nil
}

// cdcSetup keeps change data capture's publication and login on the primary (nil
// without a password: change data capture off). Before the migration Job made the schema
// it fails, and the instance manager tries again.
func cdcSetup(password string) func(context.Context, *pgx.Conn) error {
	if password == "" {
		return nil
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		return migrations.EnableCDC(ctx, conn, specs.CDCUser, password)
	}
}
