package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/testenv"
)

func openTestJobs(t *testing.T) *Jobs {
	t.Helper()
	srv := testenv.RunServer(t)
	b, err := Connect(Config{URLs: srv.URL(), Name: "store-test"}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx := context.Background()
	if err := b.Provision(ctx, Topology{}); err != nil {
		t.Fatal(err)
	}
	s, err := b.OpenJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func testSpec(t *testing.T) job.Spec {
	t.Helper()
	spec, err := job.DecodeSpec([]byte(`{"product":"acme","command":["true"]}`))
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// Every write is stamped with the transition it made, and the leader's
// read agrees with the direct one.
func TestMutateStampsTransitions(t *testing.T) {
	t.Parallel()
	s := openTestJobs(t)
	ctx := context.Background()
	spec := testSpec(t)
	now := time.Now().UTC()
	rev, err := s.Create(ctx, job.NewRecord("j1", spec, now))
	if err != nil {
		t.Fatal(err)
	}
	r, got, err := s.getFromLeader(ctx, "j1")
	if err != nil || got != rev || !r.Moved || r.From != "" || r.State != job.Queued {
		t.Fatalf("created: rev %d (want %d) %+v %v", got, rev, r, err)
	}
	_, next, rev, err := s.Mutate(ctx, "j1", func(r job.Record) (job.Record, bool, error) {
		n, err := r.Dispatch("p", now)
		return n, err == nil, err
	})
	if err != nil || !next.Moved || next.From != job.Queued {
		t.Fatalf("dispatch: %+v %v", next, err)
	}
	// A write that changes no state is not a transition.
	_, next, _, err = s.Mutate(ctx, "j1", func(r job.Record) (job.Record, bool, error) {
		r.Unroutable = true
		return r, true, nil
	})
	if err != nil || next.Moved || next.From != "" {
		t.Fatalf("flag: %+v %v", next, err)
	}
	if _, ok := next.Transition(rev + 1); ok {
		t.Fatal("a flag write reported as a transition")
	}
	direct, drev, err := s.Get(ctx, "j1")
	leader, lrev, lerr := s.getFromLeader(ctx, "j1")
	if err != nil || lerr != nil || drev != lrev || direct.Encode() == nil || string(direct.Encode()) != string(leader.Encode()) {
		t.Fatalf("direct %d %v, leader %d %v", drev, err, lrev, lerr)
	}
	if _, _, err := s.getFromLeader(ctx, "nope"); !errors.Is(err, job.ErrNotFound) {
		t.Fatalf("missing job: %v", err)
	}
}

// A refusal decided on a remembered record that is behind is decided again
// on the leader's copy.
func TestMutateRedecidesRefusalOnLeaderCopy(t *testing.T) {
	t.Parallel()
	s := openTestJobs(t)
	ctx := context.Background()
	spec := testSpec(t)
	now := time.Now().UTC()
	if _, err := s.Create(ctx, job.NewRecord("j2", spec, now)); err != nil {
		t.Fatal(err)
	}
	// Another process dispatches it: this store's memory is now behind.
	r, rev, _ := s.Get(ctx, "j2")
	n, _ := r.Dispatch("p", now)
	if _, err := s.KV.Update(ctx, "j2", n.Encode(), rev); err != nil {
		t.Fatal(err)
	}
	calls := 0
	_, next, _, err := s.Mutate(ctx, "j2", func(r job.Record) (job.Record, bool, error) {
		calls++
		if r.State != job.Dispatched {
			return r, false, nil // refuses on the stale copy
		}
		n, err := r.Requeue("again", now)
		return n, err == nil, err
	})
	if err != nil || next.State != job.Queued || calls != 2 {
		t.Fatalf("after %d decisions: %+v %v", calls, next, err)
	}
}

// A record observed on the bucket's stream is what Mutate decides on next,
// with no read; an older revision observed after it (or the answer to a
// write arriving after a later write was seen) does not replace it.
func TestObservedRecordIsMutatedWithoutRead(t *testing.T) {
	t.Parallel()
	s := openTestJobs(t)
	ctx := context.Background()
	spec := testSpec(t)
	stored := job.NewRecord("j1", spec, time.Now().UTC())
	// Written by "another process": this store's cache does not have it.
	rev, err := s.KV.Create(ctx, "j1", stored.Encode())
	if err != nil {
		t.Fatal(err)
	}
	// Observed with a mark the stored record lacks: a Mutate deciding on
	// the observed copy sees the mark, one that read the record would not.
	seen := stored
	seen.LastError = "observed"
	s.Observe(seen, rev, 100)
	older := stored
	older.LastError = "older"
	s.Observe(older, rev-1, 100)
	s.remember(older, rev, 100) // the same revision again: the first copy stays
	var decidedOn string
	_, _, _, err = s.Mutate(ctx, "j1", func(r job.Record) (job.Record, bool, error) {
		decidedOn = r.LastError
		n, err := r.Dispatch("p", time.Now().UTC())
		return n, err == nil, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if decidedOn != "observed" {
		t.Fatalf("Mutate decided on %q, want the observed copy", decidedOn)
	}
}
