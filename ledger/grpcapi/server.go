package grpcapi

import (
	"context"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"github.com/tallyhq/tally/ledger/grpcapi/ledgerv1"
)

// CallTimeout bounds one call's work on the server whatever the client's deadline, as
// the HTTP API bounds a request's.
const CallTimeout = 30 * time.Second

// Server is a gRPC server for the API: the ledger service, the standard health service
// (returned, to say NOT_SERVING while shutting down), server reflection, and Prometheus
// metrics of every call (grpc_server_*), registered with reg.
func (a *API) Server(reg prometheus.Registerer, opts ...grpc.ServerOption) (*grpc.Server, *health.Server) {
	metrics := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram())
	reg.MustRegister(metrics)
	opts = append(opts,
		grpc.ChainUnaryInterceptor(metrics.UnaryServerInterceptor(), bound, a.unary),
		grpc.ChainStreamInterceptor(metrics.StreamServerInterceptor(), a.stream))
	srv := grpc.NewServer(opts...)
	ledgerv1.RegisterLedgerServiceServer(srv, a)
	hs := health.NewServer()
	hs.SetServingStatus(ledgerv1.LedgerService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	reflection.Register(srv)
	metrics.InitializeMetrics(srv)
	return srv, hs
}

// bound gives a unary call CallTimeout at most.
func bound(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, CallTimeout)
	defer cancel()
	return handler(ctx, req)
}
