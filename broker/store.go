package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// Jobs is the typed store of job records in fleet_jobs. Every write is a
// compare-and-set on the key's revision.
//
// It remembers the records it wrote last (a bounded cache) so that Mutate
// can compare-and-set against them without reading first; a record another
// process changed since fails the CAS and is read again, so the cache can be
// stale but never wrong.
type Jobs struct {
	KV jetstream.KeyValue

	mu    sync.Mutex
	cache map[string]cached
	order []string // insertion order, for eviction
	limit int
}

type cached struct {
	r   job.Record
	rev uint64
}

// DefaultJobCache is how many records a job store remembers.
const DefaultJobCache = 8192

// OpenJobs opens the job store.
func (b *Broker) OpenJobs(ctx context.Context) (*Jobs, error) {
	kv, err := b.KV(ctx, subjects.BucketJobs)
	if err != nil {
		return nil, err
	}
	return &Jobs{KV: kv, cache: map[string]cached{}, limit: DefaultJobCache}, nil
}

// maxCachedRecord keeps large specs out of the cache.
const maxCachedRecord = 4 << 10

func (s *Jobs) remember(r job.Record, rev uint64, size int) {
	if s.limit <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if size > maxCachedRecord || r.State.Terminal() {
		delete(s.cache, r.ID) // its id stays in order until evicted: harmless
		return
	}
	if _, ok := s.cache[r.ID]; !ok {
		s.order = append(s.order, r.ID)
		for len(s.order) > s.limit {
			delete(s.cache, s.order[0])
			s.order = s.order[1:]
		}
	}
	s.cache[r.ID] = cached{r, rev}
}

func (s *Jobs) recall(id string) (cached, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.cache[id]
	return c, ok
}

// ErrExists is returned by Create when the job id is taken.
var ErrExists = errors.New("broker: job exists")

// ErrConflict is returned by Update when the revision moved.
var ErrConflict = errors.New("broker: revision conflict")

// Get reads a record and its revision.
func (s *Jobs) Get(ctx context.Context, id string) (job.Record, uint64, error) {
	if !subjects.ValidToken(id) {
		return job.Record{}, 0, fmt.Errorf("%w: %q is not a job id", job.ErrNotFound, id)
	}
	e, err := s.KV.Get(ctx, id)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return job.Record{}, 0, fmt.Errorf("%w: %s", job.ErrNotFound, id)
		}
		return job.Record{}, 0, fmt.Errorf("read job %s: %w", id, err)
	}
	r, err := job.DecodeRecord(e.Value())
	return r, e.Revision(), err
}

// Create writes a new record; ErrExists if the id is taken.
func (s *Jobs) Create(ctx context.Context, r job.Record) (uint64, error) {
	data := r.Encode()
	rev, err := s.KV.Create(ctx, r.ID, data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return 0, fmt.Errorf("%w: %s", ErrExists, r.ID)
	}
	if err != nil {
		return 0, fmt.Errorf("create job %s: %w", r.ID, err)
	}
	s.remember(r, rev, len(data))
	return rev, nil
}

// Update writes r if the key is still at rev; ErrConflict otherwise.
func (s *Jobs) Update(ctx context.Context, r job.Record, rev uint64) (uint64, error) {
	data := r.Encode()
	n, err := s.KV.Update(ctx, r.ID, data, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return 0, fmt.Errorf("%w: job %s moved past revision %d", ErrConflict, r.ID, rev)
	}
	if err != nil {
		return 0, fmt.Errorf("update job %s: %w", r.ID, err)
	}
	s.remember(r, n, len(data))
	return n, nil
}

// Mutation is a pure change to a record. Returning changed=false writes nothing.
type Mutation func(job.Record) (next job.Record, changed bool, err error)

// Mutate reads the record, applies fn, and writes the result with a CAS,
// retrying from a fresh read when another writer got there first. It returns
// the record before and after, and the new revision.
func (s *Jobs) Mutate(ctx context.Context, id string, fn Mutation) (prev, next job.Record, rev uint64, err error) {
	c, fresh := s.recall(id)
	for attempt := 0; ; attempt++ {
		if fresh {
			prev, rev, fresh = c.r, c.rev, false
		} else if prev, rev, err = s.Get(ctx, id); err != nil {
			return prev, prev, 0, err
		}
		n, changed, err := fn(prev)
		if err != nil || !changed {
			if attempt == 0 && c.rev != 0 {
				// Decided on a remembered record: decide again on a fresh one.
				continue
			}
			return prev, prev, rev, err
		}
		nrev, err := s.Update(ctx, n, rev)
		if err == nil {
			return prev, n, nrev, nil
		}
		if !errors.Is(err, ErrConflict) || attempt >= 50 {
			return prev, prev, rev, err
		}
		if ctx.Err() != nil {
			return prev, prev, rev, ctx.Err()
		}
	}
}
