package cli

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/ledger/archive"
	"github.com/tallyhq/tally/ledger/store"
)

// runArchive archives the journal partitions of one shard past its retention.
func runArchive(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("archive run", out)
	url := fs.String("database-url", "", "PostgreSQL URL of the shard, as its owner (archival drops partitions; default $DATABASE_URL)")
	dir := fs.String("dir", "", "directory the archives are written to (a volume of their own)")
	keep := fs.Int("keep-months", 0, "archive partitions that ended more than this many months ago (at least 1)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *keep < 1 {
		fmt.Fprintln(out, "--dir and --keep-months (1 or more) are required")
		return errUsage
	}
	dsn, err := databaseURL(*url)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()
	st := store.New(pool)
	// Checkpoints come first: a partition goes only once its end is checkpointed.
	if _, err := st.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(out, nil))
	done, err := archive.Run(ctx, st, *dir, time.Now().AddDate(0, -*keep, 0), log)
	for _, m := range done {
		fmt.Fprintf(out, "archived %s (%d transactions, %d entries) to %s\n", m.Partition, m.Rows["transactions"], m.Rows["entries"], m.File)
	}
	if err != nil {
		return err
	}
	if len(done) == 0 {
		fmt.Fprintln(out, "nothing to archive")
	}
	return nil
}

// runArchiveRestore loads an archive into a database and verifies it there.
func runArchiveRestore(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("archive restore", out)
	file := fs.String("file", "", "the archive (.tar.gz) to restore")
	url := fs.String("database-url", "", "PostgreSQL URL of the database to restore into; any database, not a ledger's (default $DATABASE_URL)")
	schema := fs.String("schema", "", "schema to create for it (default restored_<partition>)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *file == "" {
		fmt.Fprintln(out, "--file is required")
		return errUsage
	}
	dsn, err := databaseURL(*url)
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	name := *schema
	if name == "" {
		m, err := archive.ReadManifest(*file)
		if err != nil {
			return err
		}
		name = "restored_" + m.Partition
	}
	m, err := archive.Restore(ctx, conn, *file, name)
	if err != nil {
		return err
	}
	violations, err := archive.VerifyRestored(ctx, conn, name)
	if err != nil {
		return err
	}
	for _, v := range violations {
		fmt.Fprintln(out, "VIOLATION", v)
	}
	if len(violations) > 0 {
		fmt.Fprintf(out, "%d invariant violations in the archive of %s\n", len(violations), m.Partition)
		return ErrFailed
	}
	fmt.Fprintf(out, "ok: partition %s of ledger %s (shard %d) restored into schema %s: %d transactions, %d entries; every closing balance is its opening one plus its entries, every transaction balanced\n",
		m.Partition, m.Ledger, m.Shard, name, m.Rows["transactions"], m.Rows["entries"])
	return nil
}
