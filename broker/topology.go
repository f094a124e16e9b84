package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/subjects"
)

// Topology sizes what Provision creates. Zero values mean the defaults.
type Topology struct {
	Replicas        int           // 1 embedded, 3 on a cluster
	DuplicateWindow time.Duration // FLEET_INGEST/FLEET_JOBS dedupe window; default 2m
	EventsMaxAge    time.Duration // default 30 days
	LogsMaxAge      time.Duration // default 7 days
	LogsMaxBytes    int64         // default 1 GiB
}

func (t Topology) withDefaults() Topology {
	t.Replicas = orDefault(t.Replicas, 1)
	t.DuplicateWindow = orDefault(t.DuplicateWindow, 2*time.Minute)
	t.EventsMaxAge = orDefault(t.EventsMaxAge, 30*24*time.Hour)
	t.LogsMaxAge = orDefault(t.LogsMaxAge, 7*24*time.Hour)
	t.LogsMaxBytes = orDefault(t.LogsMaxBytes, int64(1<<30))
	return t
}

// StreamConfigs returns the configuration of every fleet stream.
func (t Topology) StreamConfigs() []jetstream.StreamConfig {
	t = t.withDefaults()
	all := func(root string) []string { return []string{root + ".>"} }
	return []jetstream.StreamConfig{
		{Name: subjects.StreamIngest, Description: "fleet submissions, one per job; work queue",
			Subjects: all(subjects.IngestRoot), Retention: jetstream.WorkQueuePolicy,
			Duplicates: t.DuplicateWindow, Replicas: t.Replicas, Storage: jetstream.FileStorage},
		{Name: subjects.StreamJobs, Description: "admitted jobs, one subject per pool; work queue",
			Subjects: all(subjects.JobsRoot), Retention: jetstream.WorkQueuePolicy,
			Duplicates: t.DuplicateWindow, Replicas: t.Replicas, Storage: jetstream.FileStorage},
		{Name: subjects.StreamEvents, Description: "every job state transition: the audit trail",
			Subjects: all(subjects.EventsRoot), Retention: jetstream.LimitsPolicy,
			MaxAge: t.EventsMaxAge, Replicas: t.Replicas, Storage: jetstream.FileStorage},
		{Name: subjects.StreamLogs, Description: "job output lines",
			Subjects: all(subjects.LogsRoot), Retention: jetstream.LimitsPolicy,
			MaxAge: t.LogsMaxAge, MaxBytes: t.LogsMaxBytes, Discard: jetstream.DiscardOld,
			Replicas: t.Replicas, Storage: jetstream.FileStorage},
		{Name: subjects.StreamDead, Description: "rejected submissions and dead jobs, with the reason",
			Subjects: all(subjects.DeadRoot), Retention: jetstream.LimitsPolicy,
			Replicas: t.Replicas, Storage: jetstream.FileStorage},
	}
}

// JobHistory is how many revisions of each job record fleet_jobs keeps: the
// coordinator's event relay reads every revision from the bucket's stream,
// so a revision must outlive the relay's lag (a leader failover, a broker
// node's loss, a burst). A job writes about four revisions per attempt plus
// one per renewal; once the relay has relayed a revision it purges the
// revisions before it, so the history is only what the relay has not read
// yet.
const JobHistory = 32

// BucketConfigs returns the configuration of every fleet KV bucket.
func (t Topology) BucketConfigs() []jetstream.KeyValueConfig {
	t = t.withDefaults()
	kv := func(name, desc string, history uint8) jetstream.KeyValueConfig {
		return jetstream.KeyValueConfig{Bucket: name, Description: desc, History: history,
			Replicas: t.Replicas, Storage: jetstream.FileStorage}
	}
	return []jetstream.KeyValueConfig{
		kv(subjects.BucketJobs, "job records: spec, state, epoch, owner, attempts", JobHistory),
		kv(subjects.BucketFactories, "one key per factory: pool, capabilities, slots, last heartbeat", 1),
		kv(subjects.BucketQueueState, "per-pool and total queue counts and ages", 1),
		kv(subjects.BucketBudgets, "budgets", 5),
		kv(subjects.BucketConfig, "gate, weights, flags", 5),
	}
}

// Provision creates or updates every stream and bucket. It is idempotent and
// safe to run from several processes at once.
func (b *Broker) Provision(ctx context.Context, t Topology) error {
	for _, sc := range t.StreamConfigs() {
		if _, err := b.JS.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("provision stream %s: %w", sc.Name, err)
		}
	}
	for _, kc := range t.BucketConfigs() {
		if _, err := b.JS.CreateOrUpdateKeyValue(ctx, kc); err != nil {
			return fmt.Errorf("provision bucket %s: %w", kc.Bucket, err)
		}
	}
	return nil
}

// PoolConsumerConfig is the durable pull consumer of a pool. Its ack wait is
// the lease; MaxDeliver bounds a poison message, after which the reconciler
// moves it to FLEET_DEAD.
//
// Its state (deliveries, pending acks) is kept in memory unless stateOnDisk:
// nats-server rewrites a file-backed consumer's state file as its deliveries
// and acks change, which with hundreds of pools is most of the broker's work
// (see BENCHMARKS.md). What memory state gives up is safe here: after a
// broker restart the consumer is gone, the factories re-register (which
// creates it again) and every message still in the pool is delivered anew
// — a job already running is told to wait by its record's live lease, a
// finished one is dropped — and MaxDeliver counts start over.
func PoolConsumerConfig(pool string, lease time.Duration, stateOnDisk bool) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       subjects.PoolConsumer(pool),
		Description:   "factories of pool " + pool,
		FilterSubject: subjects.Jobs(pool),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       lease,
		MaxDeliver:    20,
		MaxAckPending: -1,
		MaxWaiting:    4096,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MemoryStorage: !stateOnDisk,
	}
}

// EnsurePoolConsumer creates or updates pool's consumer. A consumer's
// storage cannot be changed in place, so an existing consumer keeps its
// own: a pool created under the other setting changes only once its
// consumer is deleted.
func (b *Broker) EnsurePoolConsumer(ctx context.Context, pool string, lease time.Duration, stateOnDisk bool) error {
	if err := subjects.CheckToken("pool", pool); err != nil {
		return err
	}
	cfg := PoolConsumerConfig(pool, lease, stateOnDisk)
	_, err := b.JS.CreateOrUpdateConsumer(ctx, subjects.StreamJobs, cfg)
	if err != nil {
		if cur, cerr := b.JS.Consumer(ctx, subjects.StreamJobs, cfg.Durable); cerr == nil &&
			cur.CachedInfo().Config.MemoryStorage != cfg.MemoryStorage {
			cfg.MemoryStorage = cur.CachedInfo().Config.MemoryStorage
			_, err = b.JS.CreateOrUpdateConsumer(ctx, subjects.StreamJobs, cfg)
		}
	}
	if err != nil {
		return fmt.Errorf("provision consumer %s: %w", cfg.Durable, err)
	}
	return nil
}
