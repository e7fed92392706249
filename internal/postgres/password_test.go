package postgres

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A password set through its SCRAM verifier lets the role log in with scram-sha-256 and
// no other password, and never appears in the server's log, even with every statement
// logged (it used to be sent as a plain literal in ALTER ROLE).
func TestPasswordNeverTravelsInSQL(t *testing.T) {
	dir, err := os.MkdirTemp("", "tally-password-") // postgres may run as another user: 0755
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	hba := filepath.Join(dir, "hba.conf")
	if err = os.WriteFile(hba, []byte("host all "+Superuser+" 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	srv, err := Start(ctx, Config{DataDir: filepath.Join(dir, "data"),
		Params: map[string]string{"hba_file": hba, "log_statement": "all", "log_min_error_statement": "info"}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop() //nolint:errcheck
	conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE ROLE app LOGIN"); err != nil {
		t.Fatal(err)
	}
	const password = "K7QW2ZJXN4MPR5TY3VBH6CDL8EFG9SAU"
	if err := SetPassword(ctx, conn, "app", password); err != nil {
		t.Fatal(err)
	}
	as := func(pw string) error {
		dsn := strings.Replace(srv.DSN("postgres"), Superuser+"@", "app:"+pw+"@", 1)
		c, err := pgx.Connect(ctx, dsn)
		if err == nil {
			c.Close(ctx)
		}
		return err
	}
	if err := as(password); err != nil {
		t.Errorf("log in with the password: %v", err)
	}
	if err := as("wrong" + password[5:]); err == nil {
		t.Error("logged in with a wrong password")
	}
	log, err := os.ReadFile(filepath.Join(dir, "data", "postgres.log"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), password) {
		t.Error("the password is in the server's log")
	}
	if !strings.Contains(string(log), "ALTER ROLE") {
		t.Error("statements were not logged, so the check above proves nothing")
	}
}
