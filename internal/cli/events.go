package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/ledger/events"
)

// kafkaFlags are the flags that say how to reach Kafka.
type kafkaFlags struct {
	brokers, caFile, certFile, keyFile, sasl, user *string
	tls                                            *bool
}

func addKafkaFlags(fs *flag.FlagSet) kafkaFlags {
	return kafkaFlags{
		brokers:  fs.String("brokers", "", "Kafka bootstrap brokers, host:port[,host:port...]"),
		tls:      fs.Bool("kafka-tls", false, "reach Kafka over TLS (verified against the system roots or --kafka-ca-file)"),
		caFile:   fs.String("kafka-ca-file", "", "PEM CA certificates Kafka's certificate must chain to (implies --kafka-tls)"),
		certFile: fs.String("kafka-cert-file", "", "a client certificate (PEM) for Kafka's mutual TLS (implies --kafka-tls)"),
		keyFile:  fs.String("kafka-key-file", "", "the key of --kafka-cert-file"),
		sasl:     fs.String("kafka-sasl", "", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (the password from $"+specs.KafkaPasswordEnv+")"),
		user:     fs.String("kafka-user", "", "the SASL user"),
	}
}

func (f kafkaFlags) kafka() (events.Kafka, error) {
	k := events.Kafka{SASL: *f.sasl, User: *f.user, Password: os.Getenv(specs.KafkaPasswordEnv)}
	for _, b := range strings.Split(*f.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			k.Brokers = append(k.Brokers, b)
		}
	}
	if len(k.Brokers) == 0 {
		return k, errors.New("give --brokers")
	}
	if (k.SASL == "") != (k.User == "") {
		return k, errors.New("--kafka-sasl and --kafka-user go together")
	}
	if *f.tls || *f.caFile != "" || *f.certFile != "" {
		k.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		if *f.caFile != "" {
			pem, err := os.ReadFile(*f.caFile)
			if err != nil {
				return k, fmt.Errorf("--kafka-ca-file: %w", err)
			}
			k.TLS.RootCAs = x509.NewCertPool()
			if !k.TLS.RootCAs.AppendCertsFromPEM(pem) {
				return k, fmt.Errorf("--kafka-ca-file %s holds no PEM certificate", *f.caFile)
			}
		}
		if *f.certFile != "" {
			cert, err := tls.LoadX509KeyPair(*f.certFile, *f.keyFile)
			if err != nil {
				return k, fmt.Errorf("--kafka-cert-file: %w", err)
			}
			k.TLS.Certificates = []tls.Certificate{cert}
		}
	}
	if _, err := k.Mechanism(); err != nil {
		return k, err
	}
	return k, nil
}

func runRelay(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("relay", out)
	var urls stringList
	fs.Var(&urls, "shard-url", "PostgreSQL URL of a shard's primary, as a member of tally_relay, repeated in shard order (default $"+specs.RelayShardURLsEnv+")")
	kf := addKafkaFlags(fs)
	topic := fs.String("topic", specs.DefaultEventsTopic, "the topic events go to")
	opsListen := fs.String("ops-listen", "127.0.0.1:9090", "address for /metrics and /healthz")
	batch := fs.Int("batch", events.DefaultBatch, "most events per round")
	poll := fs.Duration("poll", events.DefaultPoll, "how often an idle relay looks for new events")
	logFormat := fs.String("log-format", "json", "json or text")
	if err := parse(fs, args); err != nil {
		return err
	}
	dsns := shardURLs(urls, specs.RelayShardURLsEnv)
	if len(dsns) == 0 {
		return fmt.Errorf("give at least one --shard-url or set %s", specs.RelayShardURLsEnv)
	}
	k, err := kf.kafka()
	if err != nil {
		return err
	}
	log, err := newLogger(*logFormat)
	if err != nil {
		return err
	}
	producer, err := events.NewProducer(k)
	if err != nil {
		return err
	}
	defer producer.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := events.NewMetrics(reg)
	ops, err := serveOps(ctx, *opsListen, reg)
	if err != nil {
		return err
	}
	defer ops()
	log.Info("event relay running", "shards", len(dsns), "topic", *topic, "brokers", k.Brokers, "ops", *opsListen)
	return events.RunShards(ctx, dsns, events.Config{Client: producer, Topic: *topic, Batch: *batch, Poll: *poll,
		Log: log, Metrics: metrics})
}

// serveOps serves /metrics and /healthz until the returned stop is called.
func serveOps(ctx context.Context, addr string, reg *prometheus.Registry) (stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}, nil
}

func runEventsTail(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("events tail", out)
	kf := addKafkaFlags(fs)
	var o events.TailOptions
	fs.StringVar(&o.Topic, "topic", specs.DefaultEventsTopic, "the topic to read")
	fs.DurationVar(&o.Idle, "idle", 0, "stop once no event came for this long (0: follow until interrupted)")
	fs.BoolVar(&o.ToEnd, "to-end", false, "stop once the topic is read up to where it ended when tail began")
	fs.IntVar(&o.Count, "count", 0, "stop after this many events (0: no limit)")
	fs.BoolVar(&o.All, "all", false, "print redeliveries too (by default skipped: same shard and account, sequence not above the last printed)")
	if err := parse(fs, args); err != nil {
		return err
	}
	k, err := kf.kafka()
	if err != nil {
		return err
	}
	_, err = events.Tail(ctx, k, o, out)
	return err
}

func runEventsBroker(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("events broker", out)
	listen := fs.String("listen", "127.0.0.1:9092", "address to listen on")
	advertise := fs.String("advertise", "", "host:port clients are told to reach this broker at (default --listen)")
	topic := fs.String("topic", specs.DefaultEventsTopic, "a topic to create at start")
	partitions := fs.Int("partitions", 4, "partitions of --topic")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *advertise == "" {
		*advertise = *listen
	}
	c, err := startBroker(*listen, *advertise, *topic, *partitions)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(out, "an in-memory Kafka broker (kfake, for trying Tally's events; not for production) on %s, advertised as %s, topic %s\n",
		*listen, *advertise, *topic)
	<-ctx.Done()
	return nil
}

// startBroker serves an in-memory Kafka (kfake) on listen, telling clients to reach it
// at advertise, with topic made.
func startBroker(listen, advertise, topic string, partitions int) (*kfake.Cluster, error) {
	_, portText, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("broker address %q: %w", listen, err)
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return nil, fmt.Errorf("broker address %q: %w", listen, err)
	}
	// kfake listens on 127.0.0.1 and tells clients its listener's address; listen where
	// asked instead, and tell them advertise.
	listenFn := func(network, _ string) (net.Listener, error) {
		ln, err := net.Listen(network, listen)
		if err != nil {
			return nil, err
		}
		return advertised{Listener: ln, addr: advertisedAddr(advertise)}, nil
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.ListenFn(listenFn),
		kfake.SeedTopics(int32(partitions), topic), kfake.AllowAutoTopicCreation())
	if err != nil {
		return nil, fmt.Errorf("start the broker: %w", err)
	}
	return c, nil
}

// advertised is a listener that reports another address: the one clients should dial.
type advertised struct {
	net.Listener
	addr net.Addr
}

// Addr is the advertised address.
func (a advertised) Addr() net.Addr { return a.addr }

type advertisedAddr string

// Network is tcp.
func (advertisedAddr) Network() string { return "tcp" }

// String is host:port.
func (a advertisedAddr) String() string { return string(a) }
