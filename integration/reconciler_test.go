package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// registerFake announces a factory that will never pull on its own: the test
// plays it by hand through the pool's consumer.
func (f *fleet) registerFake(id, pool string, caps ...string) jetstream.Consumer {
	f.t.Helper()
	var r job.RegisterReply
	info := job.FactoryInfo{ID: id, Pool: pool, Caps: caps, Slots: 1}
	if err := f.b.Call(context.Background(), subjects.VerbRegister, info, &r); err != nil || r.Err != nil {
		f.t.Fatalf("register: %v %v", err, r.Err)
	}
	cons, err := f.b.JS.Consumer(context.Background(), r.Stream, r.Consumer)
	if err != nil {
		f.t.Fatal(err)
	}
	return cons
}

// keepAlive heartbeats a fake factory until the test ends.
func (f *fleet) keepAlive(id, pool string, caps ...string) {
	stop := make(chan struct{})
	done := make(chan struct{})
	f.t.Cleanup(func() { close(stop); <-done })
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
				var r job.RegisterReply
				_ = f.b.Call(context.Background(), subjects.VerbHeartbeat, job.FactoryInfo{ID: id, Pool: pool, Caps: caps, Slots: 1}, &r)
			}
		}
	}()
}

func (f *fleet) deregister(id, pool string, caps ...string) {
	f.t.Helper()
	var r job.RegisterReply
	if err := f.b.Call(context.Background(), subjects.VerbDeregister, job.FactoryInfo{ID: id, Pool: pool, Caps: caps, Slots: 1}, &r); err != nil || r.Err != nil {
		f.t.Fatalf("deregister: %v %v", err, r.Err)
	}
}

func fetchOne(t *testing.T, cons jetstream.Consumer) jetstream.Msg {
	t.Helper()
	b, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range b.Messages() {
		return m
	}
	t.Fatalf("no message: %v", b.Error())
	return nil
}

// A zombie claimed the job and acked its message, then vanished: JetStream
// will never redeliver it. The reconciler re-admits it once the lease lapsed.
func TestReconcilerReadmitsLapsedJobWithoutMessage(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	cons := f.registerFake("rogue", "rogue", "zz=1")
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"zz=1"}})
	m := fetchOne(t, cons)
	md, _ := m.Metadata()
	var claim job.ClaimReply
	err := f.b.Call(context.Background(), subjects.VerbClaim, job.ClaimRequest{JobID: v.JobID, DispatchGen: 1, Factory: "rogue",
		StreamSeq: md.Sequence.Stream, Delivery: md.NumDelivered}, &claim)
	if err != nil || claim.Verdict != job.VerdictRun {
		t.Fatalf("claim: %v %+v", err, claim)
	}
	if err := m.DoubleAck(context.Background()); err != nil { // the message is gone; the job is running
		t.Fatal(err)
	}
	f.deregister("rogue", "rogue", "zz=1")
	real := f.startFactory(factory.Config{Caps: []string{"zz=1"}})
	r := f.waitState(v.JobID, 30*time.Second, job.Succeeded)
	if r.Epoch != 2 || r.Owner != real.ID() {
		t.Fatalf("finished under epoch %d by %s", r.Epoch, r.Owner)
	}
	checkHistory(t, v.JobID, f.events(v.JobID))
}

// A job dispatched to a pool whose only factory then disappears is routed
// again to a live pool.
func TestReconcilerReroutesStrandedJob(t *testing.T) {
	t.Parallel()
	f := startFleet(t, func(c *coordinator.Config) { c.ReRouteAfter = time.Second })
	f.registerFake("ghost", "ghost", "zz=2") // never heartbeats again: gone after FactoryTTL
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"zz=2"}})
	r := f.waitState(v.JobID, 10*time.Second, job.Dispatched)
	if r.Pool != "ghost" {
		t.Fatalf("dispatched to %q", r.Pool)
	}
	f.startFactory(factory.Config{Caps: []string{"zz=2"}})
	r = f.waitState(v.JobID, 30*time.Second, job.Succeeded)
	if r.Pool == "ghost" || r.DispatchGen != 2 {
		t.Fatalf("ran in pool %q at dispatch %d", r.Pool, r.DispatchGen)
	}
	checkHistory(t, v.JobID, f.events(v.JobID))
}

// A message that hits MaxDeliver is kept in FLEET_DEAD, removed from the
// work queue, and its job marked dead with the reason.
func TestReconcilerHandlesMaxDeliver(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	cons := f.registerFake("flaky", "flaky", "zz=3")
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"zz=3"}})
	ci, _ := cons.Info(context.Background())
	for range ci.Config.MaxDeliver {
		m := fetchOne(t, cons)
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	// The server notices the limit when it next tries to deliver.
	if b, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second)); err == nil {
		for m := range b.Messages() {
			t.Fatalf("message delivered past MaxDeliver: %v", m.Headers())
		}
	}
	r := f.waitState(v.JobID, 20*time.Second, job.Dead)
	if !strings.Contains(r.LastError, "poison") {
		t.Fatalf("last error %q", r.LastError)
	}
	dead := readAll(t, f.b.JS, subjects.StreamDead, subjects.Dead("acme"), func(m jetstream.Msg) jetstream.Msg { return m })
	if len(dead) != 1 || dead[0].Headers().Get(subjects.HeaderJobID) != v.JobID {
		t.Fatalf("FLEET_DEAD has %d messages", len(dead))
	}
	testenv.Eventually(t, 10*time.Second, func() bool {
		s, err := f.b.JS.Stream(context.Background(), subjects.StreamJobs)
		if err != nil {
			return false
		}
		info, err := s.Info(context.Background())
		return err == nil && info.State.Msgs == 0
	}, "poison message still in %s", subjects.StreamJobs)
	checkHistory(t, v.JobID, f.events(v.JobID))
}

// Two coordinators: the leader dies without a word; the standby takes over
// within a few seconds and jobs keep flowing.
func TestLeaderFailover(t *testing.T) {
	t.Parallel()
	srv := testenv.RunServer(t)
	f := &fleet{t: t, url: srv.URL(), srv: srv, log: testLogger(t)}
	f.b = f.connect("test-client")
	leaderB := f.connect("leader")
	leader, err := coordinator.New(leaderB, testCoordConfig(), f.log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- leader.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testenv.Eventually(t, 10*time.Second, leader.IsLeader, "first coordinator never led")
	standby := f.startCoordinatorNoWait()
	f.jobs, _ = f.b.OpenJobs(context.Background())
	f.startFactory(factory.Config{Slots: 2})
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}})
	f.waitState(v.JobID, 20*time.Second, job.Succeeded)
	if standby.IsLeader() {
		t.Fatal("two leaders")
	}
	killedAt := time.Now()
	leaderB.Close() // the leader is gone: no hand-over, its key just stops moving
	testenv.Eventually(t, 10*time.Second, standby.IsLeader, "standby never took over")
	t.Logf("leadership moved in %v", time.Since(killedAt).Round(time.Millisecond))
	v2 := f.submit(job.Spec{Product: "acme", Command: []string{"true"}})
	f.waitState(v2.JobID, 20*time.Second, job.Succeeded)
}

// A transition written behind the coordinators' backs (by a writer that
// published nothing, like one killed right after its CAS) must not leave
// the leader thinking the pool is full, and must still reach the audit
// trail: the leader follows the bucket, and relays its event.
func TestModelHealsFromLostEvent(t *testing.T) {
	t.Parallel()
	f := startFleet(t, func(c *coordinator.Config) { c.Prefetch = -1 })
	cons := f.registerFake("solo", "solo", "zz=4") // one slot, no prefetch
	a := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"zz=4"}})
	m := fetchOne(t, cons)
	md, _ := m.Metadata()
	var claim job.ClaimReply
	if err := f.b.Call(context.Background(), subjects.VerbClaim, job.ClaimRequest{JobID: a.JobID, DispatchGen: 1, Factory: "solo",
		StreamSeq: md.Sequence.Stream, Delivery: md.NumDelivered}, &claim); err != nil || claim.Verdict != job.VerdictRun {
		t.Fatalf("claim: %v %+v", err, claim)
	}
	// Complete behind the coordinators' backs: the record moves, no event.
	if _, _, _, err := f.jobs.Mutate(context.Background(), a.JobID, func(r job.Record) (job.Record, bool, error) {
		n, err := r.Complete(claim.Epoch, "solo", job.Outcome{}, time.Now().UTC(), job.Backoff{})
		return n, err == nil, err
	}); err != nil {
		t.Fatal(err)
	}
	_ = m.Ack()
	f.keepAlive("solo", "solo", "zz=4") // while the leader heals
	b := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"zz=4"}})
	f.waitState(b.JobID, 20*time.Second, job.Dispatched)
	evs := f.events(a.JobID)
	checkHistory(t, a.JobID, evs)
	if last := evs[len(evs)-1]; last.From != job.Running || last.To != job.Succeeded {
		t.Fatalf("last event %s→%s", last.From, last.To)
	}
}

// Regression (chaos suite, BUG-2): a dispatched job whose message was
// consumed without a claim — a factory told "drop" by a claim that read a
// replica behind the record, then acked — stayed dispatched for ever. The
// reconciler now sees that the message is gone and dispatches it again.
func TestReconcilerRedispatchesConsumedMessage(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	cons := f.registerFake("gulp", "gulp", "zz=5")
	f.keepAlive("gulp", "gulp", "zz=5")
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"zz=5"}})
	m := fetchOne(t, cons)
	if err := m.DoubleAck(context.Background()); err != nil { // gone, unclaimed
		t.Fatal(err)
	}
	m = fetchOne(t, cons) // the reconciler's new dispatch
	md, _ := m.Metadata()
	if m.Headers().Get(subjects.HeaderJobID) != v.JobID || m.Headers().Get(subjects.HeaderDispatchGen) != "2" {
		t.Fatalf("redispatch: headers %v", m.Headers())
	}
	var claim job.ClaimReply
	if err := f.b.Call(context.Background(), subjects.VerbClaim, job.ClaimRequest{JobID: v.JobID, DispatchGen: 2, Factory: "gulp",
		StreamSeq: md.Sequence.Stream, Delivery: md.NumDelivered}, &claim); err != nil || claim.Verdict != job.VerdictRun {
		t.Fatalf("claim: %v %+v", err, claim)
	}
	checkHistory(t, v.JobID, f.events(v.JobID))
}

// Regression (chaos suite, BUG-2): a job recorded as dispatched whose pool
// message was never stored (its publish was lost with a broker node) gets
// the message published again.
func TestReconcilerRepublishesMissingMessage(t *testing.T) {
	t.Parallel()
	f := startFleet(t)
	cons := f.registerFake("lone", "lone", "zz=6")
	f.keepAlive("lone", "lone", "zz=6")
	// A job no pool can serve stays queued; it is then moved into the pool
	// behind the leader's back, with no message.
	v := f.submit(job.Spec{Product: "acme", Command: []string{"true"}, Requires: []string{"zz=7"}})
	if _, _, _, err := f.jobs.Mutate(context.Background(), v.JobID, func(r job.Record) (job.Record, bool, error) {
		n, err := r.Dispatch("lone", time.Now().UTC())
		return n, err == nil, err
	}); err != nil {
		t.Fatal(err)
	}
	m := fetchOne(t, cons)
	if m.Headers().Get(subjects.HeaderJobID) != v.JobID || m.Headers().Get(subjects.HeaderDispatchGen) != "1" {
		t.Fatalf("republished: headers %v", m.Headers())
	}
}
