package events

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// DeliveryTimeout bounds how long a round waits for Kafka before it counts as failed
// (and is tried again): the lag and error metrics move while Kafka is away.
const DeliveryTimeout = 10 * time.Second

// Kafka says how to reach the brokers.
type Kafka struct {
	Brokers []string
	TLS     *tls.Config // nil: plaintext
	// SASL: "" (none), PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with User and Password.
	SASL           string
	User, Password string
}

// Mechanism returns the SASL mechanism Kafka names, nil for none.
func (k Kafka) Mechanism() (sasl.Mechanism, error) {
	switch strings.ToUpper(k.SASL) {
	case "":
		return nil, nil
	case "PLAIN":
		return plain.Auth{User: k.User, Pass: k.Password}.AsMechanism(), nil
	case "SCRAM-SHA-256":
		return scram.Auth{User: k.User, Pass: k.Password}.AsSha256Mechanism(), nil
	case "SCRAM-SHA-512":
		return scram.Auth{User: k.User, Pass: k.Password}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("events: SASL mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", k.SASL)
}

// Options are the client options reaching the brokers (for producers and consumers).
func (k Kafka) Options() ([]kgo.Opt, error) {
	if len(k.Brokers) == 0 {
		return nil, fmt.Errorf("events: no Kafka brokers given")
	}
	opts := []kgo.Opt{kgo.SeedBrokers(k.Brokers...)}
	if k.TLS != nil {
		opts = append(opts, kgo.DialTLSConfig(k.TLS))
	}
	m, err := k.Mechanism()
	if err != nil {
		return nil, err
	}
	if m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// NewProducer returns the relay's producer: every in-sync replica acknowledging, no
// lingering (a round is sent whole at once), one request in flight per broker (a retry
// never overtakes what was sent before it), and a delivery timeout so a round with Kafka
// away fails and is tried again. Not Kafka's idempotent producer: it never gives up on a
// record it sent without an answer, so a round would wait for a broker that may never
// come back; the relay's delivery is at least once anyway, with stable ids.
func NewProducer(k Kafka) (*kgo.Client, error) {
	opts, err := k.Options()
	if err != nil {
		return nil, err
	}
	opts = append(opts, kgo.DisableIdempotentWrite(), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.MaxProduceRequestsInflightPerBroker(1),
		kgo.RecordDeliveryTimeout(DeliveryTimeout), kgo.ProducerLinger(0),
		kgo.ProducerBatchCompression(kgo.Lz4Compression(), kgo.NoCompression()))
	c, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("events: kafka client: %w", err)
	}
	return c, nil
}
