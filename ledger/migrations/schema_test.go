package migrations_test

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/internal/postgres"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var update = flag.Bool("update", false, "rewrite schema.sql from the migrations")

// schemaFile is the live schema, dumped: migrations are append-only and redefine
// functions in full, so this is the one place to read what the database runs today.
const schemaFile = "schema.sql"

// dumpNoise are the lines of a pg_dump that say which build dumped it rather than what
// the schema is: its versions, and the per-run key of its \restrict guard.
var dumpNoise = regexp.MustCompile(`(?m)^(-- Dumped (from|by) .*|\\(un)?restrict .*)\n`)

// TestSchemaDumpIsCurrent: schema.sql is what the migrations make, as pg_dump prints it
// (tables, constraints, functions, triggers, grants; the journal's parents, not their
// dated partitions). `make schema` rewrites it.
func TestSchemaDumpIsCurrent(t *testing.T) {
	db := pgtest.NewDB(t)
	bin, err := postgres.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(context.Background(), filepath.Join(bin, "pg_dump"),
		"--schema-only", "--schema=tally", "--no-owner", "--dbname="+db.SuperDSN(),
		// The journal's partitions are named and bounded by the day the schema was made.
		"--exclude-table=tally.*_history", "--exclude-table=tally.*_p2*")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("pg_dump: %v: %s", err, stderr.String())
	}
	dump := dumpNoise.ReplaceAll(out, nil)
	if *update {
		if err := os.WriteFile(schemaFile, dump, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	committed, err := os.ReadFile(schemaFile)
	if err != nil {
		t.Fatalf("%v: run make schema", err)
	}
	if !bytes.Equal(committed, dump) {
		t.Fatalf("%s is stale: run make schema and commit it", schemaFile)
	}
}
