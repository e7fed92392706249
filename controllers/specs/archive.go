package specs

import (
	"strconv"

	corev1 "k8s.io/api/core/v1"
	batchv1ac "k8s.io/client-go/applyconfigurations/batch/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
)

// DefaultArchiveSchedule runs the archiver daily, at an hour few other jobs choose.
const DefaultArchiveSchedule = "23 3 * * *"

// ArchiveMount is where the archive volume is mounted in the archiver's pod.
const ArchiveMount = "/archive"

// ArchivePVC is the volume a shard's partitions are archived to. Like the shard's data
// it is kept when the shard or the cluster goes, unless deletionPolicy is Delete
// (DataOwners).
func ArchivePVC(shard *v1alpha1.LedgerShard) *corev1ac.PersistentVolumeClaimApplyConfiguration {
	r := shard.Spec.Retention
	spec := corev1ac.PersistentVolumeClaimSpec().WithAccessModes(corev1.ReadWriteOnce).
		WithResources(corev1ac.VolumeResourceRequirements().WithRequests(corev1.ResourceList{corev1.ResourceStorage: r.Storage.Size}))
	if r.Storage.StorageClass != nil {
		spec = spec.WithStorageClassName(*r.Storage.StorageClass)
	}
	pvc := corev1ac.PersistentVolumeClaim(ArchiveName(shard.Name), shard.Namespace).WithLabels(ShardLabels(shard, ComponentArchive)).WithSpec(spec)
	if len(DataOwners(shard)) > 0 {
		pvc = pvc.WithOwnerReferences(shardOwner(shard))
	}
	return pvc
}

// ArchiveCronJob runs `tally archive run` on the shard's schedule: it checkpoints, then
// archives the partitions that ended more than spec.retention.months ago to the archive
// volume, one run at a time.
func ArchiveCronJob(shard *v1alpha1.LedgerShard, verifyTLS bool) *batchv1ac.CronJobApplyConfiguration {
	r := shard.Spec.Retention
	schedule := r.Schedule
	if schedule == "" {
		schedule = DefaultArchiveSchedule
	}
	labels := ShardLabels(shard, ComponentArchive)
	archiver := corev1ac.Container().WithName("archive").WithImage(shard.Spec.Image).WithSecurityContext(restrictedContainer()).
		WithCommand(TallyBinary, "archive", "run", "--dir", ArchiveMount, "--keep-months", strconv.Itoa(int(r.Months))).
		WithEnv(secretEnv("PGPASSWORD", SecretSuperuser(shard.Name), corev1.BasicAuthPasswordKey),
			corev1ac.EnvVar().WithName("DATABASE_URL").WithValue(superuserURL(shard, verifyTLS))).
		WithVolumeMounts(corev1ac.VolumeMount().WithName("archive").WithMountPath(ArchiveMount))
	pod := corev1ac.PodSpec().WithRestartPolicy(corev1.RestartPolicyNever).WithSecurityContext(restrictedPod(tallyUID)).
		WithVolumes(corev1ac.Volume().WithName("archive").WithPersistentVolumeClaim(
			corev1ac.PersistentVolumeClaimVolumeSource().WithClaimName(ArchiveName(shard.Name))))
	if verifyTLS {
		vol, mount := caVolume(shard.Name)
		pod, archiver = pod.WithVolumes(vol), archiver.WithVolumeMounts(mount)
	}
	return batchv1ac.CronJob(ArchiveName(shard.Name), shard.Namespace).WithLabels(labels).WithOwnerReferences(shardOwner(shard)).
		WithSpec(batchv1ac.CronJobSpec().WithSchedule(schedule).WithConcurrencyPolicy("Forbid").
			WithSuccessfulJobsHistoryLimit(3).WithFailedJobsHistoryLimit(3).
			WithJobTemplate(batchv1ac.JobTemplateSpec().WithLabels(labels).WithSpec(batchv1ac.JobSpec().WithBackoffLimit(2).
				WithTemplate(corev1ac.PodTemplateSpec().WithLabels(labels).WithSpec(pod.WithContainers(archiver))))))
}
