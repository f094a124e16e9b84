package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// Jobs is the typed store of job records in fleet_jobs. Every write is a
// compare-and-set on the key's revision.
//
// It remembers the records it wrote or was shown (Observe) last, in a
// bounded cache, so that Mutate can compare-and-set against them without
// reading first; a record another process changed since fails the CAS and
// is read again, so the cache can be stale but never wrong.
type Jobs struct {
	KV jetstream.KeyValue
	nc *nats.Conn

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
	return &Jobs{KV: kv, nc: b.NC, cache: map[string]cached{}, limit: DefaultJobCache}, nil
}

// maxCachedRecord keeps large specs out of the cache.
const maxCachedRecord = 4 << 10

// Observe remembers a revision of a record read from the bucket's stream
// (size: its encoded length), so that a Mutate that follows needs no read:
// a record another process wrote, or one this store is still creating
// (its write can be seen on the stream before its own answer arrives).
func (s *Jobs) Observe(r job.Record, rev uint64, size int) { s.remember(r, rev, size) }

// remember keeps r at rev unless a later revision is remembered already
// (the answer to a write can arrive after a later write was seen).
func (s *Jobs) remember(r job.Record, rev uint64, size int) {
	if s.limit <= 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.cache[r.ID]; ok && c.rev >= rev {
		return
	}
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

// ErrConflict is returned by update when the revision moved.
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
	r.Moved, r.From = true, ""
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

// update writes r if the key is still at rev; ErrConflict otherwise.
func (s *Jobs) update(ctx context.Context, r job.Record, rev uint64) (uint64, error) {
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

// Mutate reads the record, applies fn, and writes the result with a CAS. It
// returns the record before and after, and the new revision; the record
// written is stamped with the transition it makes (Record.Moved, From).
//
// The first decision is made on the nearest copy: the record this store
// wrote last, or a direct get, which any replica may answer from behind. A
// decision that refuses, or a write that conflicts, is made again on the
// stream leader's copy, so nothing is refused because a replica lagged.
func (s *Jobs) Mutate(ctx context.Context, id string, fn Mutation) (prev, next job.Record, rev uint64, err error) {
	for attempt := 0; ; attempt++ {
		switch c, ok := s.recall(id); {
		case attempt == 0 && ok:
			prev, rev = c.r, c.rev
		case attempt == 0:
			prev, rev, err = s.Get(ctx, id)
		default:
			prev, rev, err = s.getFromLeader(ctx, id)
		}
		if err != nil {
			if attempt == 0 && errors.Is(err, job.ErrNotFound) {
				continue
			}
			return prev, prev, 0, err
		}
		n, changed, err := fn(prev)
		if err != nil || !changed {
			if attempt == 0 {
				continue
			}
			return prev, prev, rev, err
		}
		n.Moved = n.State != prev.State
		n.From = ""
		if n.Moved {
			n.From = prev.State
		}
		nrev, err := s.update(ctx, n, rev)
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

// getFromLeader reads a record through the stream leader's message-get API
// (not a direct get, which any replica may serve from behind).
func (s *Jobs) getFromLeader(ctx context.Context, id string) (job.Record, uint64, error) {
	if !subjects.ValidToken(id) {
		return job.Record{}, 0, fmt.Errorf("%w: %q is not a job id", job.ErrNotFound, id)
	}
	req, _ := json.Marshal(map[string]string{"last_by_subj": JobsKVSubject(id)})
	msg, err := s.nc.RequestWithContext(ctx, jsAPIPrefix+"STREAM.MSG.GET."+JobsKVStream, req)
	if err != nil {
		return job.Record{}, 0, fmt.Errorf("read job %s: %w", id, err)
	}
	var resp struct {
		Message *struct {
			Seq  uint64 `json:"seq"`
			Hdrs []byte `json:"hdrs"`
			Data []byte `json:"data"`
		} `json:"message"`
		Error *struct {
			Code        int    `json:"code"`
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return job.Record{}, 0, fmt.Errorf("read job %s: bad reply: %w", id, err)
	}
	switch {
	case resp.Error != nil && resp.Error.Code == 404:
		return job.Record{}, 0, fmt.Errorf("%w: %s", job.ErrNotFound, id)
	case resp.Error != nil:
		return job.Record{}, 0, fmt.Errorf("read job %s: %s", id, resp.Error.Description)
	case resp.Message == nil:
		return job.Record{}, 0, fmt.Errorf("read job %s: empty reply", id)
	case bytes.Contains(resp.Message.Hdrs, []byte("KV-Operation")):
		return job.Record{}, 0, fmt.Errorf("%w: %s (deleted)", job.ErrNotFound, id)
	}
	r, err := job.DecodeRecord(resp.Message.Data)
	if err == nil {
		s.remember(r, resp.Message.Seq, len(resp.Message.Data))
	}
	return r, resp.Message.Seq, err
}

// JobsKVStream is the stream behind fleet_jobs: every record write, in order.
const JobsKVStream = "KV_" + subjects.BucketJobs

// JobsKVSubject is the subject of job id's record in JobsKVStream.
func JobsKVSubject(id string) string { return kvSubjectPrefix + id }

const (
	jsAPIPrefix     = "$JS.API."
	kvSubjectPrefix = "$KV." + subjects.BucketJobs + "."
)
