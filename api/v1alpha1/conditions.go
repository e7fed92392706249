package v1alpha1

// Condition types on LedgerCluster and LedgerShard.
const (
	ConditionReady             = "Ready"
	ConditionProgressing       = "Progressing"
	ConditionDegraded          = "Degraded"
	ConditionMigrationsApplied = "MigrationsApplied"
)

// Condition reasons. Each is a stable, enumerated CamelCase word tools may switch on.
const (
	ReasonReconciled           = "Reconciled"
	ReasonShardsNotReady       = "ShardsNotReady"
	ReasonWaitingForMigrations = "WaitingForMigrations"
	ReasonScaleDownBlocked     = "ScaleDownBlocked"
	ReasonCreatingInstances    = "CreatingInstances"
	ReasonPrimaryNotReady      = "PrimaryNotReady"
	ReasonInstancesNotReady    = "InstancesNotReady"
	ReasonMigrationRunning     = "MigrationRunning"
	ReasonMigrationFailed      = "MigrationJobFailed"
	ReasonMigrationsCurrent    = "SchemaCurrent"
	ReasonRollingOut           = "RollingOut"
	ReasonAsExpected           = "AsExpected"
	ReasonFailingOver          = "FailingOver"
	ReasonFailoverBlocked      = "FailoverBlocked"
	ReasonSwitchingOver        = "SwitchingOver"
	ReasonPrimaryUnreachable   = "PrimaryUnreachable"
	ReasonRetiringInstances    = "RetiringInstances"
	ReasonDeletionBlocked      = "DeletionBlocked"
	ReasonShardLost            = "ShardLost"
	ReasonReconcileError       = "ReconcileError"
)
