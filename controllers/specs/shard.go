package specs

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	batchv1ac "k8s.io/client-go/applyconfigurations/batch/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	rbacv1ac "k8s.io/client-go/applyconfigurations/rbac/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// Paths inside PostgreSQL pods.
const (
	DataMount       = "/var/lib/postgresql/data"
	PGData          = DataMount + "/pgdata"
	ControllerMount = "/controller" // the tally binary, copied in by the init container
	ConfigMount     = "/etc/tally/postgres"
	TallyBinary     = "/tally" // where the tally image keeps the binary
)

// migrationBackoffLimit bounds retries of a failing migration Job; after that the failure
// is reported, not retried in a loop.
const migrationBackoffLimit int32 = 3

// migrationDeadlineSeconds bounds one migration Job.
const migrationDeadlineSeconds int64 = 900

// postgresUID is the uid of the postgres user in the official images.
const postgresUID int64 = 999

func shardOwner(shard *v1alpha1.LedgerShard) *metav1ac.OwnerReferenceApplyConfiguration {
	return metav1ac.OwnerReference().
		WithAPIVersion(v1alpha1.GroupVersion.String()).WithKind("LedgerShard").
		WithName(shard.Name).WithUID(shard.UID).WithController(true).WithBlockOwnerDeletion(true)
}

// FinalizerShardProtection holds a deleted LedgerShard until the operator has decided
// what its deletion may do (see the shard controller's deletion step).
const FinalizerShardProtection = "ledger.tally.dev/shard-protection"

// DataOwners are the owner references of what holds a shard's data, its volumes and
// credentials: the shard under deletionPolicy Delete, so they go with it; none under
// Retain, so no delete of the shard or its cluster, in any propagation mode, removes
// them, and a shard created again under the same name finds them.
func DataOwners(shard *v1alpha1.LedgerShard) []metav1.OwnerReference {
	if shard.Spec.DeletionPolicy.Resolved() != v1alpha1.DeletionPolicyDelete {
		return nil
	}
	t := true
	return []metav1.OwnerReference{ownerRef(shard.Name, shard.UID, "LedgerShard", &t)}
}

// Secret builds one of a shard's credentials. Secrets are created once with a generated
// password and never re-applied, so a password never changes under a running database;
// their owners follow the deletion policy (DataOwners).
func Secret(shard *v1alpha1.LedgerShard, name, username, password string) *corev1.Secret {
	s := &corev1.Secret{
		Type: corev1.SecretTypeBasicAuth,
		StringData: map[string]string{
			corev1.BasicAuthUsernameKey: username,
			corev1.BasicAuthPasswordKey: password,
		},
	}
	s.Name, s.Namespace, s.Labels = name, shard.Namespace, ShardLabels(shard, ComponentPostgres)
	s.OwnerReferences = DataOwners(shard)
	return s
}

// StatusTokenSecret builds the Secret of the instance managers' status API token.
// Like the credentials, it is created once and never re-applied.
func StatusTokenSecret(shard *v1alpha1.LedgerShard, token string) *corev1.Secret {
	s := &corev1.Secret{Type: corev1.SecretTypeOpaque, StringData: map[string]string{StatusTokenKey: token}}
	s.Name, s.Namespace, s.Labels = SecretStatusToken(shard.Name), shard.Namespace, ShardLabels(shard, ComponentPostgres)
	s.OwnerReferences = DataOwners(shard)
	return s
}

// InstanceServiceAccount is the identity of a shard's PostgreSQL pods.
func InstanceServiceAccount(shard *v1alpha1.LedgerShard) *corev1ac.ServiceAccountApplyConfiguration {
	return corev1ac.ServiceAccount(InstanceAccount(shard.Name), shard.Namespace).
		WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard))
}

// InstanceRole lets the instance managers read their own LedgerShard, whose
// status.targetPrimary tells each one whether to run as primary. Nothing else: a
// compromised database pod cannot touch the rest of the namespace.
func InstanceRole(shard *v1alpha1.LedgerShard) *rbacv1ac.RoleApplyConfiguration {
	return rbacv1ac.Role(InstanceAccount(shard.Name), shard.Namespace).
		WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard)).
		WithRules(rbacv1ac.PolicyRule().WithAPIGroups(v1alpha1.GroupVersion.Group).WithResources("ledgershards").
			WithResourceNames(shard.Name).WithVerbs("get", "watch"))
}

// InstanceRoleBinding grants InstanceRole to the pods' ServiceAccount.
func InstanceRoleBinding(shard *v1alpha1.LedgerShard) *rbacv1ac.RoleBindingApplyConfiguration {
	name := InstanceAccount(shard.Name)
	return rbacv1ac.RoleBinding(name, shard.Namespace).
		WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard)).
		WithRoleRef(rbacv1ac.RoleRef().WithAPIGroup("rbac.authorization.k8s.io").WithKind("Role").WithName(name)).
		WithSubjects(rbacv1ac.Subject().WithKind("ServiceAccount").WithName(name).WithNamespace(shard.Namespace))
}

// PostgresConfig renders the allow-listed parameters, sorted, as postgresql.conf lines,
// and the shard's shape the instance managers need: how many instances, the synchronous
// rule and durability. The instance manager includes custom.conf; settings the operator
// owns come after and win.
func PostgresConfig(shard *v1alpha1.LedgerShard) *corev1ac.ConfigMapApplyConfiguration {
	pg := ResolvePostgres(shard.Spec.Postgres)
	keys := make([]string, 0, len(pg.Parameters))
	for k := range pg.Parameters {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(pg.Parameters[k], "'", "''"))
	}
	return corev1ac.ConfigMap(ConfigName(shard.Name), shard.Namespace).
		WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard)).
		WithData(map[string]string{
			"custom.conf": b.String(), "synchronous": SynchronousStandbyRule(pg),
			"instances": strconv.Itoa(int(pg.Instances)), "dataDurability": string(pg.Durability),
		})
}

// SynchronousStandbyRule is the method and count of synchronous_standby_names, such as
// "ANY 1"; the instance manager adds the standby names it currently sees.
func SynchronousStandbyRule(pg Postgres) string {
	if pg.SyncNumber <= 0 {
		return ""
	}
	return strings.ToUpper(string(pg.SyncMethod)) + " " + strconv.Itoa(int(pg.SyncNumber))
}

// Services builds a shard's services: -rw selects the primary, -ro the replicas, -r any
// instance, and the headless -instances names each instance. Role labels move on
// failover; services follow them.
func Services(shard *v1alpha1.LedgerShard) []*corev1ac.ServiceApplyConfiguration {
	base := map[string]string{LabelShard: shard.Name, LabelComponent: ComponentPostgres}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for bk, bv := range base {
			m[bk] = bv
		}
		return m
	}
	build := func(name string, selector map[string]string) *corev1ac.ServiceApplyConfiguration {
		return corev1ac.Service(name, shard.Namespace).
			WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard)).
			WithSpec(corev1ac.ServiceSpec().WithType(corev1.ServiceTypeClusterIP).WithSelector(selector).
				WithPorts(corev1ac.ServicePort().WithName("postgres").WithPort(PostgresPort).
					WithTargetPort(intstr.FromString("postgres")).WithProtocol(corev1.ProtocolTCP)))
	}
	headless := corev1ac.Service(ServiceInstances(shard.Name), shard.Namespace).
		WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard)).
		WithSpec(corev1ac.ServiceSpec().WithClusterIP(corev1.ClusterIPNone).WithPublishNotReadyAddresses(true).
			WithSelector(base).
			WithPorts(corev1ac.ServicePort().WithName("postgres").WithPort(PostgresPort).
				WithTargetPort(intstr.FromString("postgres")).WithProtocol(corev1.ProtocolTCP),
				corev1ac.ServicePort().WithName("status").WithPort(StatusPort).
					WithTargetPort(intstr.FromString("status")).WithProtocol(corev1.ProtocolTCP)))
	return []*corev1ac.ServiceApplyConfiguration{
		build(ServiceRW(shard.Name), with(LabelRole, string(v1alpha1.RolePrimary))),
		build(ServiceRO(shard.Name), with(LabelRole, string(v1alpha1.RoleReplica))),
		build(ServiceR(shard.Name), base),
		headless,
	}
}

// PVC builds the data volume of one instance, owned as DataOwners says.
func PVC(shard *v1alpha1.LedgerShard, instance string) *corev1ac.PersistentVolumeClaimApplyConfiguration {
	pg := ResolvePostgres(shard.Spec.Postgres)
	labels := ShardLabels(shard, ComponentPostgres)
	labels[LabelPod] = instance
	spec := corev1ac.PersistentVolumeClaimSpec().
		WithAccessModes(corev1.ReadWriteOnce).
		WithResources(corev1ac.VolumeResourceRequirements().WithRequests(corev1.ResourceList{corev1.ResourceStorage: pg.StorageSize}))
	if pg.StorageClass != nil {
		spec = spec.WithStorageClassName(*pg.StorageClass)
	}
	pvc := corev1ac.PersistentVolumeClaim(instance, shard.Namespace).WithLabels(labels).WithSpec(spec)
	if len(DataOwners(shard)) > 0 {
		pvc = pvc.WithOwnerReferences(shardOwner(shard))
	}
	return pvc
}

// Pod builds one PostgreSQL instance. The pod runs the tally instance manager in the
// stock PostgreSQL image: an init container copies the tally binary from the tally image
// into a shared volume, the CloudNativePG way, so any PostgreSQL image works. The pod
// shares one process namespace, so PID 1 is the pod's pause process, which reaps the
// processes orphaned when postgres dies (its backends after a kill -9, say); the manager
// waits only for its own children.
func Pod(shard *v1alpha1.LedgerShard, instance string, role v1alpha1.InstanceRole) *corev1ac.PodApplyConfiguration {
	pg := ResolvePostgres(shard.Spec.Postgres)
	spec := podSpec(shard, instance, pg)
	labels := ShardLabels(shard, ComponentPostgres)
	labels[LabelPod] = instance
	labels[LabelRole] = string(role)
	return corev1ac.Pod(instance, shard.Namespace).
		WithLabels(labels).WithAnnotations(map[string]string{AnnotationSpecHash: PodSpecHash(shard, instance)}).
		WithOwnerReferences(shardOwner(shard)).WithSpec(spec)
}

// PodSpecHash identifies the desired pod spec of an instance (everything but its role,
// which moves on failover without a restart). A pod whose hash differs needs a rollout.
func PodSpecHash(shard *v1alpha1.LedgerShard, instance string) string {
	b, _ := json.Marshal(podSpec(shard, instance, ResolvePostgres(shard.Spec.Postgres)))
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

func secretEnv(name, secret, key string) *corev1ac.EnvVarApplyConfiguration {
	return corev1ac.EnvVar().WithName(name).WithValueFrom(corev1ac.EnvVarSource().
		WithSecretKeyRef(corev1ac.SecretKeySelector().WithName(secret).WithKey(key)))
}

func podSpec(shard *v1alpha1.LedgerShard, instance string, pg Postgres) *corev1ac.PodSpecApplyConfiguration {
	res := corev1ac.ResourceRequirements()
	if pg.Resources.Requests != nil {
		res = res.WithRequests(pg.Resources.Requests)
	}
	if pg.Resources.Limits != nil {
		res = res.WithLimits(pg.Resources.Limits)
	}
	scheme := corev1.URISchemeHTTP
	if shard.Spec.TLS.Enabled() {
		scheme = corev1.URISchemeHTTPS // the kubelet does not verify the certificate, nor does it need to
	}
	probe := func(path string, period int32) *corev1ac.ProbeApplyConfiguration {
		return corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().WithPath(path).WithPort(intstr.FromString("status")).WithScheme(scheme)).
			WithPeriodSeconds(period).WithTimeoutSeconds(3)
	}
	// Instances of one shard avoid sharing a topology domain (a node by default).
	term := corev1ac.PodAffinityTerm().WithTopologyKey(pg.TopologyKey).
		WithLabelSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{LabelShard: shard.Name, LabelComponent: ComponentPostgres}))
	anti := corev1ac.PodAntiAffinity()
	if pg.AntiAffinityRequired {
		anti = anti.WithRequiredDuringSchedulingIgnoredDuringExecution(term)
	} else {
		anti = anti.WithPreferredDuringSchedulingIgnoredDuringExecution(corev1ac.WeightedPodAffinityTerm().WithWeight(100).WithPodAffinityTerm(term))
	}
	spec := corev1ac.PodSpec().
		WithAffinity(corev1ac.Affinity().WithPodAntiAffinity(anti)).
		WithHostname(instance).WithSubdomain(ServiceInstances(shard.Name)).
		WithServiceAccountName(InstanceAccount(shard.Name)).
		WithTerminationGracePeriodSeconds(60).
		WithShareProcessNamespace(true).
		WithSecurityContext(restrictedPod(postgresUID)).
		WithInitContainers(corev1ac.Container().WithName("bootstrap").WithImage(shard.Spec.Image).
			WithCommand(TallyBinary, "copy-binary", ControllerMount+"/tally").WithSecurityContext(restrictedContainer()).
			WithVolumeMounts(corev1ac.VolumeMount().WithName("controller").WithMountPath(ControllerMount))).
		WithContainers(corev1ac.Container().WithName("postgres").WithImage(pg.Image).
			WithCommand(ControllerMount+"/tally", "instance", "run").WithSecurityContext(restrictedContainer()).
			WithEnv(
				corev1ac.EnvVar().WithName("POD_NAME").WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.name"))),
				corev1ac.EnvVar().WithName("NAMESPACE").WithValueFrom(corev1ac.EnvVarSource().WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath("metadata.namespace"))),
				corev1ac.EnvVar().WithName("TALLY_SHARD").WithValue(shard.Name),
				corev1ac.EnvVar().WithName("TALLY_SHARD_INDEX").WithValue(strconv.Itoa(int(shard.Spec.Index))),
				corev1ac.EnvVar().WithName("PGDATA").WithValue(PGData),
				secretEnv("TALLY_SUPERUSER_PASSWORD", SecretSuperuser(shard.Name), corev1.BasicAuthPasswordKey),
				secretEnv("TALLY_APP_PASSWORD", SecretApp(shard.Name), corev1.BasicAuthPasswordKey),
				secretEnv("TALLY_REPLICATION_PASSWORD", SecretReplication(shard.Name), corev1.BasicAuthPasswordKey),
				secretEnv("TALLY_STATUS_TOKEN", SecretStatusToken(shard.Name), StatusTokenKey),
			).
			WithPorts(corev1ac.ContainerPort().WithName("postgres").WithContainerPort(PostgresPort),
				corev1ac.ContainerPort().WithName("status").WithContainerPort(StatusPort)).
			WithReadinessProbe(probe("/readyz", 5)).
			WithLivenessProbe(probe("/healthz", 10).WithFailureThreshold(6)).
			WithResources(res).
			WithVolumeMounts(
				corev1ac.VolumeMount().WithName("data").WithMountPath(DataMount),
				corev1ac.VolumeMount().WithName("controller").WithMountPath(ControllerMount),
				corev1ac.VolumeMount().WithName("config").WithMountPath(ConfigMount),
				corev1ac.VolumeMount().WithName("tmp").WithMountPath("/tmp"),
			)).
		WithVolumes(
			corev1ac.Volume().WithName("data").WithPersistentVolumeClaim(corev1ac.PersistentVolumeClaimVolumeSource().WithClaimName(instance)),
			corev1ac.Volume().WithName("controller").WithEmptyDir(corev1ac.EmptyDirVolumeSource()),
			corev1ac.Volume().WithName("tmp").WithEmptyDir(corev1ac.EmptyDirVolumeSource()),
			corev1ac.Volume().WithName("config").WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(ConfigName(shard.Name))),
		)
	if shard.Spec.TLS.Enabled() {
		// Readable by the postgres group (fsGroup) only; the manager copies the key into
		// the data directory with the mode PostgreSQL insists on.
		spec = spec.WithVolumes(corev1ac.Volume().WithName("tls").WithSecret(corev1ac.SecretVolumeSource().
			WithSecretName(SecretTLS(shard.Name)).WithDefaultMode(0o440)))
		spec.Containers[0].WithVolumeMounts(corev1ac.VolumeMount().WithName("tls").WithMountPath(TLSMount).WithReadOnly(true)).
			WithEnv(corev1ac.EnvVar().WithName("TALLY_TLS_DIR").WithValue(TLSMount))
	}
	if shard.Spec.CDC {
		// In the pod's spec, so turning it on or off rolls the pods: wal_level needs a restart.
		spec.Containers[0].WithEnv(secretEnv(CDCPasswordEnv, SecretCDC(shard.Name), corev1.BasicAuthPasswordKey))
	}
	return spec
}

// CDCPasswordEnv carries the change data capture login's password to the instance
// manager; set, it turns change data capture on.
const CDCPasswordEnv = "TALLY_CDC_PASSWORD"

// PDBs keeps voluntary disruptions (node drains) from taking the primary, or more than one
// replica at a time. A shard of one instance gets only the primary's budget.
func PDBs(shard *v1alpha1.LedgerShard) []*policyv1ac.PodDisruptionBudgetApplyConfiguration {
	pg := ResolvePostgres(shard.Spec.Postgres)
	sel := func(role v1alpha1.InstanceRole) *metav1ac.LabelSelectorApplyConfiguration {
		return metav1ac.LabelSelector().WithMatchLabels(map[string]string{LabelShard: shard.Name, LabelRole: string(role), LabelComponent: ComponentPostgres})
	}
	pdbs := []*policyv1ac.PodDisruptionBudgetApplyConfiguration{
		policyv1ac.PodDisruptionBudget(PDBPrimary(shard.Name), shard.Namespace).
			WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard)).
			WithSpec(policyv1ac.PodDisruptionBudgetSpec().WithMinAvailable(intstr.FromInt32(1)).WithSelector(sel(v1alpha1.RolePrimary))),
	}
	if pg.Instances > 1 {
		pdbs = append(pdbs, policyv1ac.PodDisruptionBudget(PDBReplicas(shard.Name), shard.Namespace).
			WithLabels(ShardLabels(shard, ComponentPostgres)).WithOwnerReferences(shardOwner(shard)).
			WithSpec(policyv1ac.PodDisruptionBudgetSpec().WithMaxUnavailable(intstr.FromInt32(1)).WithSelector(sel(v1alpha1.RoleReplica))))
	}
	return pdbs
}

// superuserURL reaches the shard's primary as the superuser, whose password a container
// has in $PGPASSWORD.
func superuserURL(shard *v1alpha1.LedgerShard, verifyTLS bool) string {
	return fmt.Sprintf("postgres://%s:$(PGPASSWORD)@%s.%s.svc:%d/%s?%s", Superuser, ServiceRW(shard.Name), shard.Namespace, PostgresPort, Database, sslParams(shard.Name, verifyTLS))
}

// MigrationJob runs `tally migrate` from the shard's tally image against its primary,
// through the -rw service, as the schema owner; with verifyTLS it requires TLS and
// verifies the server against the cluster CA.
func MigrationJob(shard *v1alpha1.LedgerShard, version int32, verifyTLS bool) *batchv1ac.JobApplyConfiguration {
	labels := ShardLabels(shard, ComponentMigration)
	labels[LabelSchema] = strconv.Itoa(int(version))
	url := superuserURL(shard, verifyTLS)
	migrate := corev1ac.Container().WithName("migrate").WithImage(shard.Spec.Image).WithSecurityContext(restrictedContainer()).
		WithCommand(TallyBinary, "migrate", "--shard", strconv.Itoa(int(shard.Spec.Index)), "--grant-login", AppUser,
			"--monitor-login", MonitorUser, "--relay-login", RelayUser).
		WithEnv(secretEnv("PGPASSWORD", SecretSuperuser(shard.Name), corev1.BasicAuthPasswordKey),
			secretEnv("TALLY_MONITOR_PASSWORD", SecretMonitor(shard.Name), corev1.BasicAuthPasswordKey),
			secretEnv(RelayPasswordEnv, SecretRelay(shard.Name), corev1.BasicAuthPasswordKey),
			corev1ac.EnvVar().WithName("DATABASE_URL").WithValue(url))
	pod := corev1ac.PodSpec().WithRestartPolicy(corev1.RestartPolicyNever).WithSecurityContext(restrictedPod(tallyUID))
	if verifyTLS {
		vol, mount := caVolume(shard.Name)
		pod, migrate = pod.WithVolumes(vol), migrate.WithVolumeMounts(mount)
	}
	return batchv1ac.Job(MigrationJobName(shard.Name, version), shard.Namespace).
		WithLabels(labels).WithOwnerReferences(shardOwner(shard)).
		WithSpec(batchv1ac.JobSpec().WithBackoffLimit(migrationBackoffLimit).WithActiveDeadlineSeconds(migrationDeadlineSeconds).
			WithTemplate(corev1ac.PodTemplateSpec().WithLabels(labels).WithSpec(pod.WithContainers(migrate))))
}
