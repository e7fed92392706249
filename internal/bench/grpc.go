package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strconv"
	"text/tabwriter"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tallyhq/tally/ledger/grpcapi/ledgerv1"
)

// ModeGRPC is the http service's gRPC API, driven by a Go gRPC client in this process
// over one connection (issue 20): uniform and hot transfers, and balance reads.
const ModeGRPC = "grpc"

// startGRPC dials the service's gRPC API when the mode is asked for.
func (e *env) startGRPC(modes []string) error {
	if !slices.Contains(modes, ModeGRPC) {
		return nil
	}
	s := e.services[ModeHTTP]
	conn, err := grpc.NewClient(s.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("bench: dial the gRPC API: %w", err)
	}
	e.grpcConn, e.grpc = conn, ledgerv1.NewLedgerServiceClient(conn)
	e.services[ModeGRPC] = s
	return nil
}

// grpcOp is the scenario's operation over gRPC: true if the ledger refused it.
func (e *env) grpcOp(scenario string) opFunc {
	refused := func(err error) (bool, error) {
		if err == nil {
			return false, nil
		}
		switch status.Code(err) {
		case codes.FailedPrecondition, codes.InvalidArgument, codes.NotFound, codes.AlreadyExists:
			return true, nil
		}
		return false, err
	}
	if scenario == Reads {
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			_, err := e.grpc.GetBalance(ctx, &ledgerv1.GetBalanceRequest{AccountId: e.accounts[rng.IntN(len(e.accounts))].String()})
			return refused(err)
		}
	}
	pick := e.pick(scenario)
	return func(ctx context.Context, rng *rand.Rand) (bool, error) {
		from, to := pick(rng)
		_, err := e.grpc.Transfer(ctx, &ledgerv1.TransferRequest{IdempotencyKey: "g-" + strconv.FormatInt(e.seq.Add(1), 10),
			FromAccount: e.accounts[from].String(), ToAccount: e.accounts[to].String(), Amount: "1.00", Asset: "USD"})
		return refused(err)
	}
}

// printGRPCTargets prints issue 20's figures: the gRPC API against the HTTP API.
func printGRPCTargets(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printRatios(tw, "gRPC (issue 20)", results, []ratioTarget{
		{"uniform transfers over gRPC >= HTTP", Uniform, ModeGRPC, ModeHTTP, 1},
		{"hot transfers over gRPC >= HTTP", Hot, ModeGRPC, ModeHTTP, 1},
		{"balance reads over gRPC >= HTTP", Reads, ModeGRPC, ModeHTTP, 1},
	})
	tw.Flush()
}
