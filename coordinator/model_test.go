package coordinator

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/scheduler"
)

func queuedEvent(id string, rev uint64, unroutable bool, requires ...string) job.Event {
	t0 := time.Unix(1700000000, 0)
	return job.Event{JobID: id, To: job.Queued, Rev: rev, Created: t0, At: t0,
		Requires: requires, Unroutable: unroutable}
}

// Regression (bench, 100,000 held jobs): a gate round looked at every
// queued job of a class no pool serves, to find those not yet flagged
// unroutable — O(held jobs) per round, which saturated the leader loop and
// stalled dispatch. Now each round looks at a bounded number of them, and
// at none once all are flagged.
func TestUnroutableMarkingIsBoundedPerRound(t *testing.T) {
	t.Parallel()
	m := newModel(1, false)
	const n = 5 * markScan
	for i := range n {
		m.apply(queuedEvent(fmt.Sprintf("j%d", i), uint64(i+1), false, "gpu=none"))
	}
	cl := m.classes[job.Labels([]string{"gpu=none"}).Key()]
	if cl == nil || cl.unmarked != n {
		t.Fatalf("class: %+v", cl)
	}
	rev := uint64(n + 1)
	marked := map[string]bool{}
	for round := 0; cl.unmarked > 0; round++ {
		if round > 2*n/markBudget+10 {
			t.Fatalf("after %d rounds %d jobs are still unmarked", round, cl.unmarked)
		}
		_, marks := m.admit(maxOutstanding, markBudget)
		if len(marks) > markBudget {
			t.Fatalf("round %d marked %d", round, len(marks))
		}
		for _, e := range marks {
			if marked[e.id] {
				t.Fatalf("%s marked twice", e.id)
			}
			marked[e.id] = true
			rev++
			m.apply(queuedEvent(e.id, rev, true, "gpu=none")) // the flag's write comes back
		}
	}
	if len(marked) != n {
		t.Fatalf("marked %d of %d", len(marked), n)
	}
	// All flagged: a round finds nothing to do, and looks at nothing.
	scan := cl.scan
	if _, marks := m.admit(maxOutstanding, markBudget); len(marks) != 0 || cl.scan != scan {
		t.Fatalf("a round with every job flagged marked %d and moved its cursor %d→%d", len(marks), scan, cl.scan)
	}
	// A new job of the class is found within a round or two.
	m.apply(queuedEvent("late", rev+1, false, "gpu=none"))
	found := false
	for range 2 * (n + 1) / markScan {
		if _, marks := m.admit(maxOutstanding, markBudget); len(marks) == 1 && marks[0].id == "late" {
			found = true
			break
		}
	}
	if !found {
		t.Fatal("a new unroutable job was never marked")
	}
}

// Regression (bench, intermittent: a pool's 17 places held by finished
// jobs, the gate shut, until the reconciler's unclaimed check a lease
// later): an event can reach the model after the job's end — a dispatch
// worker's result when its publish ack came back after the job had been
// claimed, run and completed, or a local write overtaken by later ones.
// Applied to a job the model had already forgotten, it brought the job
// back as a phantom holding its pool's room. A finished job stays
// finished: no event at or below its final revision recreates it.
func TestLateEventDoesNotReviveFinishedJob(t *testing.T) {
	t.Parallel()
	m := newModel(1, false)
	m.putFactory("f1", &job.FactoryInfo{ID: "f1", Pool: "p", Slots: 1, LastSeen: time.Now()})
	t0 := time.Unix(1700000000, 0)
	ev := func(to job.State, rev uint64) job.Event {
		e := job.Event{JobID: "j", To: to, Rev: rev, Created: t0, At: t0}
		if to != job.Queued {
			e.Pool = "p"
		}
		return e
	}
	m.apply(ev(job.Queued, 1))
	orders, _ := m.admit(maxOutstanding, markBudget)
	if len(orders) != 1 {
		t.Fatalf("orders %v", orders)
	}
	dispatched := ev(job.Dispatched, 2)
	m.apply(dispatched) // the dispatch's own write, fed at once
	m.apply(ev(job.Running, 3))
	m.apply(ev(job.Succeeded, 4))
	if p := m.pools["p"]; p.inflight != 0 || len(m.jobs) != 0 {
		t.Fatalf("after the end: inflight %d, jobs %d", p.inflight, len(m.jobs))
	}
	// The dispatch worker's result, and a reader's late copies, come after.
	(&Coordinator{log: zap.NewNop()}).settle(m, result{e: orders[0].e, ev: &dispatched})
	m.apply(ev(job.Running, 3))
	m.apply(ev(job.Queued, 1))
	if p := m.pools["p"]; p.inflight != 0 || len(m.jobs) != 0 || m.counts[job.Dispatched] != 0 || m.counts[job.Running] != 0 {
		t.Fatalf("a finished job came back: inflight %d, jobs %v, counts %v", p.inflight, m.jobs, m.counts)
	}
	// A genuinely newer revision (an operator requeuing the job, say) is
	// still applied.
	m.apply(ev(job.Queued, 5))
	if len(m.jobs) != 1 {
		t.Fatalf("a newer revision was ignored: jobs %v", m.jobs)
	}
}

// Each class's candidate pools are kept current as factories come, change
// capabilities and go: after every step they equal a recomputation from
// every pool.
func TestCandidatesFollowPools(t *testing.T) {
	t.Parallel()
	m := newModel(1, false)
	caps := [][]string{{"os=linux"}, {"os=linux", "gpu=true"}, {"os=mac"}, {"gpu=true"}, nil}
	reqs := [][]string{nil, {"os=linux"}, {"gpu=true"}, {"os=linux", "gpu=true"}, {"os=mac"}, {"tpu=true"}}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 2000 {
		id := fmt.Sprintf("f%d", rng.IntN(12))
		switch rng.IntN(4) {
		case 0:
			m.putFactory(id, nil)
		default:
			m.putFactory(id, &job.FactoryInfo{ID: id, Pool: fmt.Sprintf("p%d", rng.IntN(4)),
				Caps: caps[rng.IntN(len(caps))], Slots: rng.IntN(3), LastSeen: time.Now()})
		}
		if step%7 == 0 { // classes appear as jobs requiring new things arrive
			m.classFor(reqs[rng.IntN(len(reqs))])
		}
		for _, cl := range m.classes {
			var want []string
			for _, p := range m.pools {
				if m.view(p).Serves(cl.req) {
					want = append(want, p.name)
				}
			}
			got := slices.Clone(m.candidates(cl))
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("step %d, class %q: candidates %v, want %v", step, cl.key, got, want)
			}
		}
	}
}

// The gate's indexes stay equal to what they summarise through a random
// run of factories coming, changing and going, jobs arriving (some no pool
// serves, some flagged unroutable), gate rounds, and dispatched jobs ending
// or coming back: the waiting classes are those with queued jobs; each
// class's count of unflagged jobs is right; its candidate heap holds
// exactly the live pools serving it, with scheduler.Pick's choice on top;
// each pool knows its classes; and the ready classes are exactly the
// waiting ones a round has work for. (With 1,000 pools a round looked at
// every class, and each release at every candidate pool.)
func TestGateIndexes(t *testing.T) {
	t.Parallel()
	m := newModel(1, false)
	caps := [][]string{{"os=linux"}, {"os=linux", "gpu=true"}, {"os=mac"}, {"gpu=true"}, nil}
	reqs := [][]string{nil, {"os=linux"}, {"gpu=true"}, {"os=mac"}, {"tpu=true"}}
	rng := rand.New(rand.NewPCG(3, 4))
	t0 := time.Unix(1700000000, 0)
	revs := map[string]uint64{}
	next := func(id string) uint64 { revs[id] += 1000; return revs[id] }
	var sent []order
	dispatched := 0
	for step := range 5000 {
		switch k := rng.IntN(20); {
		case k < 3: // a factory comes, changes or goes
			id := fmt.Sprintf("f%d", rng.IntN(8))
			if rng.IntN(4) == 0 {
				m.putFactory(id, nil)
			} else {
				m.putFactory(id, &job.FactoryInfo{ID: id, Pool: fmt.Sprintf("p%d", rng.IntN(5)),
					Caps: caps[rng.IntN(len(caps))], Slots: rng.IntN(3), LastSeen: time.Now()})
			}
		case k < 10: // a new job, of one priority mostly, of any age
			id := fmt.Sprintf("j%d", step)
			ev := queuedEvent(id, next(id), false, reqs[rng.IntN(len(reqs))]...)
			ev.Created = t0.Add(time.Duration(rng.IntN(1000)) * time.Second)
			if rng.IntN(8) == 0 {
				ev.Priority = 1 + rng.IntN(2)
			}
			m.apply(ev)
		case k < 14: // a gate round, and the unroutable flags' writes come back
			orders, marks := m.admit(1+rng.IntN(8), markBudget)
			sent = append(sent, orders...)
			dispatched += len(orders)
			for _, e := range marks {
				m.apply(queuedEvent(e.id, next(e.id), true, e.class.req...))
			}
		case len(sent) > 0: // a dispatched job ends, or comes back
			i := rng.IntN(len(sent))
			o := sent[i]
			sent = slices.Delete(sent, i, i+1)
			to := []job.State{job.Succeeded, job.Queued, job.Running}[rng.IntN(3)]
			ev := job.Event{JobID: o.e.id, To: to, Rev: next(o.e.id), Created: t0, At: t0, Requires: o.e.class.req}
			if to != job.Queued {
				ev.Pool = o.pool
			}
			m.apply(ev)
			if to == job.Running {
				sent = append(sent, o) // it will end later
			}
		}
		for _, cl := range m.classes {
			if got, want := m.waiting[cl], cl.q.Len() > 0; got != want {
				t.Fatalf("step %d, class %q with %d queued: waiting %v", step, cl.key, cl.q.Len(), got)
			}
			unflagged := 0
			prios := map[int]int{}
			var oldest int64
			for _, e := range cl.q {
				if !e.unroutable {
					unflagged++
				}
				prios[e.prio]++
				if oldest == 0 || e.created < oldest {
					oldest = e.created
				}
			}
			if len(prios) != len(cl.prios) || cl.oldest() != oldest {
				t.Fatalf("step %d, class %q: priorities %v, want %v; oldest %d, want %d", step, cl.key, cl.prios, prios, cl.oldest(), oldest)
			}
			for p, n := range prios {
				if cl.prios[p] != n {
					t.Fatalf("step %d, class %q: priorities %v, want %v", step, cl.key, cl.prios, prios)
				}
			}
			if cl.unmarked != unflagged {
				t.Fatalf("step %d, class %q: unmarked %d, want %d", step, cl.key, cl.unmarked, unflagged)
			}
			var want, views []scheduler.Pool
			for _, p := range m.pools {
				if v := m.view(p); v.Serves(cl.req) {
					want = append(want, v)
				}
				if _, in := cl.cands.at[p]; p.classes[cl] != in {
					t.Fatalf("step %d: pool %s's classes disagree with class %q's candidates", step, p.name, cl.key)
				}
			}
			for i, p := range cl.cands.ps {
				if cl.cands.at[p] != i {
					t.Fatalf("step %d, class %q: index of %s is %d, want %d", step, cl.key, p.name, cl.cands.at[p], i)
				}
				views = append(views, m.view(p))
			}
			names := func(ps []scheduler.Pool) []string {
				var out []string
				for _, p := range ps {
					out = append(out, p.Name)
				}
				slices.Sort(out)
				return out
			}
			if !slices.Equal(names(views), names(want)) {
				t.Fatalf("step %d, class %q: candidates %v, want %v", step, cl.key, names(views), names(want))
			}
			best, ok := scheduler.Pick(want)
			if ok && views[0].Name != best.Name || len(views) > 0 && !ok && views[0].Room() > 0 {
				t.Fatalf("step %d, class %q: top %+v, Pick %+v (%v)", step, cl.key, views[0], best, ok)
			}
			ready := cl.q.Len() > 0 && (len(want) == 0 && cl.unmarked > 0 || ok)
			if m.ready[cl] != ready {
				t.Fatalf("step %d, class %q: ready %v, want %v", step, cl.key, m.ready[cl], ready)
			}
		}
		for cl := range m.waiting {
			if m.classes[cl.key] != cl {
				t.Fatalf("step %d: waiting class %q is not a class", step, cl.key)
			}
		}
	}
	if dispatched < 500 {
		t.Fatalf("only %d jobs dispatched: the run did not exercise the gate", dispatched)
	}
}

// BenchmarkReleaseManyPools is one job's way through the gate — queued,
// released, finished — with pools pools every job can run on (one slot
// each, all free): the cost a release pays for the number of
// pools.
//
//	go test -run '^$' -bench ReleaseManyPools -benchmem ./coordinator
func BenchmarkReleaseManyPools(b *testing.B) {
	for _, pools := range []int{10, 1000} {
		b.Run(fmt.Sprintf("pools=%d", pools), func(b *testing.B) {
			m := newModel(0, false)
			for i := range pools {
				id := fmt.Sprintf("f%d", i)
				m.putFactory(id, &job.FactoryInfo{ID: id, Pool: fmt.Sprintf("p%d", i), Slots: 1, LastSeen: time.Now()})
			}
			t0 := time.Unix(1700000000, 0)
			var rev uint64
			b.ResetTimer()
			for i := range b.N {
				id := "j" + strconv.Itoa(i)
				rev++
				m.apply(queuedEvent(id, rev, false))
				orders, _ := m.admit(maxOutstanding, markBudget)
				if len(orders) != 1 {
					b.Fatalf("released %d", len(orders))
				}
				rev++
				m.apply(job.Event{JobID: id, To: job.Succeeded, Rev: rev, Pool: orders[0].pool, Created: t0, At: t0})
			}
		})
	}
}

// BenchmarkQueueState is one fleet_queue_state computation (once a second
// in the leader loop) with 100,000 jobs queued in one class — held, no
// pool able to run them — and a pool at work.
//
//	go test -run '^$' -bench QueueState -benchmem ./coordinator
func BenchmarkQueueState(b *testing.B) {
	m := newModel(0, false)
	m.putFactory("f1", &job.FactoryInfo{ID: "f1", Pool: "p1", Slots: 4, LastSeen: time.Now()})
	t0 := time.Unix(1700000000, 0)
	for i := range 100_000 {
		ev := queuedEvent("j"+strconv.Itoa(i), uint64(i+1), true, "gpu=true")
		ev.Created = t0.Add(time.Duration(i) * time.Millisecond)
		m.apply(ev)
	}
	c := &Coordinator{cfg: Config{ID: "c1"}}
	now := time.Now()
	b.ResetTimer()
	for b.Loop() {
		if qs := c.queueState(m, now); qs["total"].Queued != 100_000 {
			b.Fatalf("queued %d", qs["total"].Queued)
		}
	}
}
