package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// runCopyBinary copies this executable to DEST. The PostgreSQL pods' init container runs
// it from the tally image, so the instance manager can run inside any PostgreSQL image.
func runCopyBinary(_ context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("copy-binary DEST", out)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(out, "usage: tally copy-binary DEST")
		return errUsage
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	src, err := os.Open(self)
	if err != nil {
		return err
	}
	defer src.Close()
	dest := fs.Arg(0)
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".tally-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dest)
}
