package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// Regression (chaos suite, BUG-1): events used to be published by whichever
// process wrote the transition, after its compare-and-set and without
// waiting; a writer killed in between left a hole in the audit trail, and a
// leader that learned of new jobs only from events never dispatched one
// whose creation event was lost. Now the leader follows fleet_jobs itself
// and relays every revision's transition from the bucket's stream.
//
// Here no coordinator runs while records are written (as if every writer
// died right after its CAS); a coordinator started afterwards relays every
// transition exactly once, in revision order, and runs the job it never
// heard of.
func TestTransitionsWrittenWithoutPublisherAreRelayed(t *testing.T) {
	t.Parallel()
	srv := testenv.RunServer(t)
	f := &fleet{t: t, url: srv.URL(), srv: srv, log: testLogger(t)}
	f.b = f.connect("test-client")

	// A first coordinator relays a job's history, then stops.
	first, stopFirst := f.runCoordinator()
	testenv.Eventually(t, 10*time.Second, first.IsLeader, "first coordinator never led")
	var err error
	if f.jobs, err = f.b.OpenJobs(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"nobody=here"}})
	cancel := func(r job.Record) (job.Record, bool, error) {
		n, err := r.Cancel("test", time.Now().UTC())
		return n, err == nil, err
	}
	if _, _, _, err := f.jobs.Mutate(context.Background(), a.JobID, cancel); err != nil {
		t.Fatal(err)
	}
	before := f.events(a.JobID)
	stopFirst()

	// With no coordinator at all: a job is created and another one is moved
	// through three transitions, by writers that publish nothing.
	ctx := context.Background()
	spec, err := job.DecodeSpec([]byte(`{"product":"acme","command":["true"]}`))
	if err != nil {
		t.Fatal(err)
	}
	orphan := job.NewRecord("orphan1", spec, time.Now().UTC())
	if _, err := f.jobs.Create(ctx, orphan); err != nil {
		t.Fatal(err)
	}
	moved := job.NewRecord("moved1", spec, time.Now().UTC())
	if _, err := f.jobs.Create(ctx, moved); err != nil {
		t.Fatal(err)
	}
	steps := []broker.Mutation{
		func(r job.Record) (job.Record, bool, error) {
			n, err := r.Dispatch("nowhere", time.Now().UTC())
			return n, err == nil, err
		},
		func(r job.Record) (job.Record, bool, error) {
			n, err := r.Requeue("test", time.Now().UTC())
			return n, err == nil, err
		},
		cancel,
	}
	for i, step := range steps {
		if _, _, _, err := f.jobs.Mutate(ctx, moved.ID, step); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}

	// A new coordinator: the job it never heard of runs, and every
	// transition is relayed once.
	f.coord, _ = f.runCoordinator()
	testenv.Eventually(t, 10*time.Second, f.coord.IsLeader, "second coordinator never led")
	f.startFactory(factory.Config{Slots: 1})
	f.waitState(orphan.ID, 20*time.Second, job.Succeeded)
	for _, id := range []string{orphan.ID, moved.ID, a.JobID} {
		evs := f.events(id)
		checkHistory(t, id, evs)
		seen := map[uint64]bool{}
		for _, e := range evs {
			if seen[e.Rev] {
				t.Fatalf("job %s: revision %d relayed twice", id, e.Rev)
			}
			seen[e.Rev] = true
		}
		if id == moved.ID && fmt.Sprint(states(evs)) != "[queued dispatched queued cancelled]" {
			t.Fatalf("job %s: history %v", id, states(evs))
		}
		if id == a.JobID && len(evs) != len(before) {
			t.Fatalf("job %s: %d events after the restart, %d before", id, len(evs), len(before))
		}
	}
}

// A job that dies is copied to FLEET_DEAD by the relay, once.
func TestDeadJobDeadLetteredOnce(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.startFactory(factory.Config{Slots: 1})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"false"}, MaxAttempts: 1})
	f.waitState(v.JobID, 20*time.Second, job.Dead)
	filter := subjects.Dead("acme")
	testenv.Eventually(t, 10*time.Second, func() bool {
		return len(readAll(t, f.b.JS, subjects.StreamDead, filter, func(m jetstream.Msg) string {
			return m.Headers().Get(subjects.HeaderJobID)
		})) > 0
	}, "dead job never dead-lettered")
	// A leader change relays from its checkpoint: nothing is copied twice.
	f.coord, _ = f.runCoordinator()
	ids := readAll(t, f.b.JS, subjects.StreamDead, filter, func(m jetstream.Msg) string {
		return m.Headers().Get(subjects.HeaderJobID)
	})
	if len(ids) != 1 || ids[0] != v.JobID {
		t.Fatalf("dead letters: %v", ids)
	}
}

func states(evs []job.Event) []job.State {
	var out []job.State
	for _, e := range evs {
		out = append(out, e.To)
	}
	return out
}

// runCoordinator starts a coordinator and returns a function that stops it
// (also registered as cleanup).
func (f *fleet) runCoordinator(mod ...func(*coordinator.Config)) (*coordinator.Coordinator, func()) {
	f.t.Helper()
	cfg := testCoordConfig()
	for _, m := range mod {
		m(&cfg)
	}
	c, err := coordinator.New(f.connect("coordinator"), cfg, f.log)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var stopped bool
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			f.t.Errorf("coordinator: %v", err)
		}
	}
	f.t.Cleanup(stop)
	select {
	case <-c.Ready():
	case err := <-done:
		f.t.Fatalf("coordinator did not start: %v", err)
	case <-time.After(20 * time.Second):
		f.t.Fatal("coordinator not ready after 20s")
	}
	return c, stop
}

// Once a revision is relayed, the ones before it are purged: a long job
// renewing its lease does not pile up a revision per renewal, and a
// finished job keeps only its final record.
func TestRelayedRevisionsArePurged(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.startFactory(factory.Config{Slots: 1})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"sleep", "8"}})
	f.waitState(v.JobID, 20*time.Second, job.Running)
	s, err := f.b.JS.Stream(context.Background(), broker.JobsKVStream)
	if err != nil {
		t.Fatal(err)
	}
	kept := func() uint64 {
		info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(broker.JobsKVSubject(v.JobID)))
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Subjects[broker.JobsKVSubject(v.JobID)]
	}
	time.Sleep(6 * testRenew) // six renewals, each a revision
	// The latest, and one the relay may not have read yet. (Without the
	// purges, every revision since the job's creation stays.)
	testenv.Eventually(t, 4*time.Second, func() bool { return kept() <= 2 }, "a running job keeps more than two revisions after six renewals")
	if r := f.record(v.JobID); r.State != job.Running {
		t.Fatalf("the job is %s: the count above was not of a running job", r.State)
	}
	f.waitState(v.JobID, 20*time.Second, job.Succeeded)
	testenv.Eventually(t, 10*time.Second, func() bool { return kept() == 1 }, "a finished job keeps more than its final revision")
}

// Once a job's end is relayed, only its final record is kept: the bucket
// holds a history only for live jobs.
func TestFinishedJobKeepsOneRevision(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	f.startFactory(factory.Config{Slots: 1})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}})
	f.waitState(v.JobID, 20*time.Second, job.Succeeded)
	checkHistory(t, v.JobID, f.events(v.JobID))
	s, err := f.b.JS.Stream(context.Background(), broker.JobsKVStream)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(broker.JobsKVSubject(v.JobID)))
		return err == nil && info.State.Subjects[broker.JobsKVSubject(v.JobID)] == 1
	}, "a finished job keeps more than its final revision")
	if r := f.record(v.JobID); r.State != job.Succeeded {
		t.Fatalf("record after the purge: %s", r.State)
	}
}
