package cli

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// A second tally dev on the same data directory, or on an address in use, refuses at once
// with a clear error, before PostgreSQL starts (it used to migrate the running instance's
// database first and only then fail on the busy port).
func TestDevRefusesBusyDataAndPorts(t *testing.T) {
	dir := t.TempDir()
	unlock, err := lockDataDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = runDev(context.Background(), []string{"--data-dir", dir, "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"}, &out)
	if err == nil || !strings.Contains(err.Error(), "another tally dev is running") {
		t.Errorf("second tally dev on the same data: %v", err)
	}
	unlock()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	other := filepath.Join(t.TempDir(), "data")
	err = runDev(context.Background(), []string{"--data-dir", other, "--listen", ln.Addr().String(), "--ops-listen", "127.0.0.1:0"}, &out)
	if err == nil || !strings.Contains(err.Error(), "cannot listen on "+ln.Addr().String()) {
		t.Errorf("busy API address: %v", err)
	}
	if matches, _ := filepath.Glob(filepath.Join(other, "pgdata", "*")); len(matches) > 0 {
		t.Errorf("PostgreSQL was set up before the refusal: %v", matches)
	}
}

// The banner gives the database URL that tally verify needs, and the command.
func TestDevBannerNamesTheDatabase(t *testing.T) {
	b := DevBanner("127.0.0.1:8080", "127.0.0.1:9090", "/data", []string{"postgres://u@127.0.0.1:54329/tally"})
	if !strings.Contains(b, "verify --database-url 'postgres://u@127.0.0.1:54329/tally'") || strings.Contains(b, "between shards") {
		t.Errorf("banner:\n%s", b)
	}
	// With shards, verify covers all of them, and the script pays across shards.
	b = DevBanner("127.0.0.1:8080", "127.0.0.1:9090", "/data", []string{"postgres://u@h/tally", "postgres://u@h/tally_shard_1"})
	if !strings.Contains(b, "verify --shard-url 'postgres://u@h/tally' --shard-url 'postgres://u@h/tally_shard_1'") || !strings.Contains(b, "between shards") {
		t.Errorf("banner with 2 shards:\n%s", b)
	}
}
