// Command tally is the one binary of Tally: the ledger service, its schema tools, a
// local development setup, and (later) the operator and the PostgreSQL instance manager.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/tallyhq/tally/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
