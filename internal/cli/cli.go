// Package cli implements the tally subcommands; main.go only dispatches to Run.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
)

// errUsage marks a mistake in the command line; the usage has already been printed.
var errUsage = errors.New("usage")

// ErrFailed means the command ran and reported a failure (for example `verify` found a
// violation); it has already said what.
var ErrFailed = errors.New("failed")

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, out io.Writer) error
}

func commands() []command {
	return []command{
		{"ledger serve", "serve the ledger API over one or more shard databases", runLedgerServe},
		{"migrate", "apply the ledger schema to a shard database", runMigrate},
		{"verify", "recompute every balance from the journal and check every invariant", runVerify},
		{"dev", "run PostgreSQL and the ledger locally, on 127.0.0.1:8080", runDev},
		{"manager", "run the Kubernetes operator (LedgerCluster and LedgerShard controllers)", runManager},
		{"bench scale", "generate a 10-million-account ledger by COPY and measure it beside a small one", runBenchScale},
		{"bench", "measure transfer and read throughput against a PostgreSQL it starts", runBench},
		{"instance run", "run the PostgreSQL instance manager (the main process of each PostgreSQL pod)", runInstance},
		{"relay", "publish the shards' events to Kafka (the transactional outbox relay)", runRelay},
		{"events tail", "print the events a relay published, from a Kafka topic", runEventsTail},
		{"events broker", "serve an in-memory Kafka broker (kfake) to try events with; not for production", runEventsBroker},
		{"archive run", "archive a shard's journal partitions past its retention to files, then drop them", runArchive},
		{"archive restore", "load an archived partition into a database and verify it there", runArchiveRestore},
		{"copy-binary", "copy this binary to a path (the PostgreSQL pods' init container)", runCopyBinary},
	}
}

// Run executes the subcommand named by args and returns the process exit code.
func Run(ctx context.Context, args []string, out, errOut io.Writer) int {
	joined := strings.Join(args, " ")
	for _, c := range commands() {
		if joined == c.name || strings.HasPrefix(joined, c.name+" ") {
			rest := args[len(strings.Fields(c.name)):]
			err := c.run(ctx, rest, out)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				return 2
			case errors.Is(err, ErrFailed):
				return 1
			default:
				fmt.Fprintf(errOut, "tally %s: %v\n", c.name, err)
				return 1
			}
		}
	}
	fmt.Fprintln(errOut, "Tally runs double-entry ledgers on PostgreSQL.\n\nUsage: tally <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(errOut, "  %-14s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(errOut, "\nRun tally <command> -h for a command's flags.")
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		return 0
	}
	return 2
}

func newFlagSet(name string, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tally "+name, flag.ContinueOnError)
	fs.SetOutput(out)
	return fs
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected arguments: %v\n", fs.Args())
		return errUsage
	}
	return nil
}

// stringList is a repeatable flag.
type stringList []string

// String joins the values, for flag's usage text.
func (l *stringList) String() string { return strings.Join(*l, ",") }

// Set adds one more value.
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// shardURLs returns the flag's values, or else the comma-separated environment variable.
func shardURLs(flagged stringList, env string) []string {
	if len(flagged) > 0 {
		return flagged
	}
	var urls []string
	for _, u := range strings.Split(os.Getenv(env), ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return urls
}

func newLogger(format string) (*slog.Logger, error) {
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, nil)), nil
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, nil)), nil
	default:
		return nil, fmt.Errorf("log format %q: want json or text", format)
	}
}
