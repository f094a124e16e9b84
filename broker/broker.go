package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Config says how to reach NATS.
type Config struct {
	URLs      string // comma-separated; default nats://127.0.0.1:4222
	CredsFile string
	TLSCert   string
	TLSKey    string
	TLSCA     string
	Name      string // connection name shown in `nats server report connections`
	// ConnectTimeout bounds the first connection; default 10s.
	ConnectTimeout time.Duration
}

// DefaultURL is where fleet looks for NATS unless told otherwise.
const DefaultURL = "nats://127.0.0.1:4222"

// Broker is a connection to NATS with its JetStream context.
type Broker struct {
	NC  *nats.Conn
	JS  jetstream.JetStream
	log *zap.Logger
}

// Connect dials NATS. The connection reconnects forever; Close ends it.
func Connect(cfg Config, log *zap.Logger) (*Broker, error) {
	if log == nil {
		log = zap.NewNop()
	}
	urls := cfg.URLs
	if urls == "" {
		urls = DefaultURL
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		// A frozen server (paused, partitioned) is noticed in ~15 s rather
		// than the client default of 2 pings × 2 minutes.
		nats.PingInterval(5 * time.Second),
		nats.MaxPingsOutstanding(3),
		nats.Timeout(orDefault(cfg.ConnectTimeout, 10*time.Second)),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("disconnected from NATS", zap.Error(err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("reconnected to NATS", zap.String("url", nc.ConnectedUrlRedacted())) }),
	}
	if cfg.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		opts = append(opts, nats.ClientCert(cfg.TLSCert, cfg.TLSKey))
	}
	if cfg.TLSCA != "" {
		opts = append(opts, nats.RootCAs(cfg.TLSCA))
	}
	nc, err := nats.Connect(urls, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w (is a broker running? `fleet up` or `fleet broker` starts one)", redact(urls), err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
		log.Warn("async publish failed", zap.String("subject", m.Subject), zap.Error(err))
	}), jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("broker: jetstream: %w", err)
	}
	return &Broker{NC: nc, JS: js, log: log}, nil
}

func redact(urls string) string {
	var out []string
	for _, u := range strings.Split(urls, ",") {
		if at := strings.LastIndex(u, "@"); at >= 0 {
			if i := strings.Index(u, "://"); i >= 0 && i < at {
				u = u[:i+3] + "***" + u[at:]
			}
		}
		out = append(out, u)
	}
	return strings.Join(out, ",")
}

// Close drains nothing and closes the connection.
func (b *Broker) Close() {
	if b != nil && b.NC != nil {
		b.NC.Close()
	}
}

func orDefault[T comparable](v, d T) T {
	var zero T
	if v == zero {
		return d
	}
	return v
}

// KV opens a provisioned bucket.
func (b *Broker) KV(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := b.JS.KeyValue(ctx, bucket)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return nil, fmt.Errorf("bucket %s does not exist: start a coordinator (it provisions the topology) or run `fleet up`: %w", bucket, err)
		}
		return nil, fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	return kv, nil
}
