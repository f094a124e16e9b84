package coordinator

import (
	"container/heap"
	"time"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/scheduler"
)

// model is the leader's in-memory view of every unfinished job and every
// live factory, folded from fleet_jobs and fleet_factories. It holds no
// specs — only what ordering, routing and counting need — so a queued job
// costs a few hundred bytes. It is owned by the leader goroutine: no locks.
type model struct {
	jobs     map[string]*entry
	classes  map[string]*class // queued jobs grouped by what they require
	waiting  map[*class]bool   // the classes with queued jobs
	ready    map[*class]bool   // of those, the ones a gate round has work for (see touch)
	pools    map[string]*pool
	facs     map[string]job.FactoryInfo
	retries  retryHeap
	prefetch int
	gateOff  bool
	counts   map[job.State]int
	ended    endedJobs
}

// endedJobs remembers the final revision of the last len(ring) jobs that
// finished. An event can reach the model after its job's end — a dispatch
// worker's result whose publish ack came back after the job was claimed,
// run and completed; a local write overtaken by later ones — and applied
// to a job already forgotten it would bring the job back as a phantom
// holding its pool's room until the reconciler noticed, a lease later.
// Such events are seconds late at most; the ring covers far more.
type endedJobs struct {
	rev  map[string]uint64
	ring [1 << 15]string
	next int
}

// add remembers that id ended at revision rev.
func (t *endedJobs) add(id string, rev uint64) {
	if t.rev == nil {
		t.rev = map[string]uint64{}
	}
	if _, ok := t.rev[id]; ok {
		t.rev[id] = max(t.rev[id], rev)
		return
	}
	if old := t.ring[t.next]; old != "" {
		delete(t.rev, old)
	}
	t.ring[t.next], t.rev[id] = id, rev
	t.next = (t.next + 1) % len(t.ring)
}

// stale reports whether an event at revision rev of id comes from before
// the job's end.
func (t *endedJobs) stale(id string, rev uint64) bool {
	end, ok := t.rev[id]
	return ok && rev <= end
}

type entry struct {
	id         string
	state      job.State
	rev        uint64
	pool       string // for dispatched/running
	prio       int
	created    int64
	retryAt    int64
	at         int64 // when the last transition happened (unix nanos)
	checked    int64 // when the reconciler last looked at it (unix nanos)
	class      *class
	qidx       int  // index in class.q, -1 when not queued there
	ridx       int  // index in retries, -1 when not there
	pending    bool // a dispatch or requeue is in flight
	unroutable bool
	marking    bool // an unroutable mark is in flight
}

func (e *entry) item() scheduler.Item {
	return scheduler.Item{ID: e.id, Priority: e.prio, Created: e.created}
}

type class struct {
	key   string
	req   job.Labels
	q     backlog
	cands candHeap // live pools covering req, best first; kept current by poolChanged and roomChanged
	hidx  int
	// unmarked and prios count the jobs in q: those not yet flagged
	// unroutable, and those of each priority. push, pop and remove keep
	// them; a job's flag and priority change only while it is out of q.
	unmarked int
	prios    map[int]int
	scan     int // where the next search for unflagged jobs starts in q
}

func (cl *class) push(e *entry) {
	heap.Push(&cl.q, e)
	cl.count(e, 1)
}

func (cl *class) pop() *entry {
	e := heap.Pop(&cl.q).(*entry)
	cl.count(e, -1)
	return e
}

func (cl *class) remove(e *entry) {
	heap.Remove(&cl.q, e.qidx)
	cl.count(e, -1)
}

func (cl *class) count(e *entry, delta int) {
	if !e.unroutable {
		cl.unmarked += delta
	}
	if cl.prios == nil {
		cl.prios = map[int]int{}
	}
	if n := cl.prios[e.prio] + delta; n != 0 {
		cl.prios[e.prio] = n
	} else {
		delete(cl.prios, e.prio)
	}
}

// oldest is when the class's oldest queued job was created (0 if none).
// The queue is ordered by priority, then age, so while its jobs share one
// priority — the usual case — that is the top's; otherwise it is found by
// a walk.
func (cl *class) oldest() int64 {
	if len(cl.q) == 0 {
		return 0
	}
	if len(cl.prios) == 1 {
		return cl.q[0].created
	}
	oldest := cl.q[0].created
	for _, e := range cl.q {
		oldest = min(oldest, e.created)
	}
	return oldest
}

type pool struct {
	name     string
	caps     job.Labels
	facs     map[string]job.FactoryInfo
	slots    int
	inflight int // dispatched + running + dispatches in flight
	running  int
	// deadSince is when the pool lost its last live factory (zero while it
	// has one, or before it ever had one).
	deadSince time.Time
	classes   map[*class]bool // the classes it is a candidate of
}

// candHeap is a class's candidate pools, the one a job should go to now
// (scheduler.Better: most room, then name) on top.
type candHeap struct {
	m  *model
	ps []*pool
	at map[*pool]int
}

func (h candHeap) Len() int           { return len(h.ps) }
func (h candHeap) Less(i, j int) bool { return scheduler.Better(h.m.view(h.ps[i]), h.m.view(h.ps[j])) }
func (h candHeap) Swap(i, j int) {
	h.ps[i], h.ps[j] = h.ps[j], h.ps[i]
	h.at[h.ps[i]], h.at[h.ps[j]] = i, j
}
func (h *candHeap) Push(x any) {
	p := x.(*pool)
	h.at[p] = len(h.ps)
	h.ps = append(h.ps, p)
}
func (h *candHeap) Pop() any {
	last := len(h.ps) - 1
	p := h.ps[last]
	h.ps = h.ps[:last]
	delete(h.at, p)
	return p
}

func newModel(prefetch int, gateOff bool) *model {
	return &model{jobs: map[string]*entry{}, classes: map[string]*class{}, waiting: map[*class]bool{}, ready: map[*class]bool{}, pools: map[string]*pool{},
		facs: map[string]job.FactoryInfo{}, prefetch: prefetch, gateOff: gateOff, counts: map[job.State]int{}}
}

// apply folds one event in; events older than what is known are ignored.
func (m *model) apply(ev job.Event) {
	e := m.jobs[ev.JobID]
	if e != nil && ev.Rev <= e.rev {
		return
	}
	if e == nil {
		if ev.To.Terminal() {
			m.ended.add(ev.JobID, ev.Rev)
			return
		}
		if m.ended.stale(ev.JobID, ev.Rev) {
			return
		}
		e = &entry{id: ev.JobID, qidx: -1, ridx: -1}
		m.jobs[ev.JobID] = e
	} else {
		m.leave(e)
	}
	e.rev = ev.Rev
	e.pending = false
	e.marking = false
	e.unroutable = ev.Unroutable
	if ev.Created.IsZero() {
		ev.Created = ev.At
	}
	if e.class == nil || ev.To == job.Queued {
		e.prio, e.created = ev.Priority, ev.Created.UnixNano()
		e.class = m.classFor(ev.Requires)
	}
	e.state, e.pool, e.at = ev.To, ev.Pool, ev.At.UnixNano()
	if e.state.Terminal() {
		delete(m.jobs, e.id)
		m.ended.add(e.id, e.rev)
		return
	}
	if !ev.RetryAt.IsZero() {
		e.retryAt = ev.RetryAt.UnixNano()
	}
	m.enter(e)
}

// leave removes e from every index its current state put it in.
func (m *model) leave(e *entry) {
	m.counts[e.state]--
	if e.qidx >= 0 {
		e.class.remove(e)
		m.touch(e.class)
	}
	if e.ridx >= 0 {
		heap.Remove(&m.retries, e.ridx)
	}
	if e.inflightState() {
		if p := m.pools[e.pool]; p != nil {
			p.inflight--
			if e.state == job.Running {
				p.running--
			}
			m.roomChanged(p)
		}
	}
}

func (e *entry) inflightState() bool {
	return e.state == job.Dispatched || e.state == job.Running || e.state == job.Queued && e.pending && e.pool != ""
}

func (m *model) enter(e *entry) {
	m.counts[e.state]++
	switch e.state {
	case job.Queued:
		if !e.pending {
			e.class.push(e)
			m.touch(e.class)
		}
	case job.Failed:
		heap.Push(&m.retries, e)
	}
	if e.inflightState() {
		p := m.pool(e.pool)
		p.inflight++
		if e.state == job.Running {
			p.running++
		}
		m.roomChanged(p)
	}
}

// touch files cl, after a change to its queue, its candidates or their
// room, among the waiting classes (those with queued jobs) and the ready
// ones: waiting, and either a candidate pool has room (the top of its
// heap) or no pool serves it and some of its jobs are not yet flagged
// unroutable. A gate round looks at the ready classes only.
func (m *model) touch(cl *class) {
	if cl.q.Len() == 0 {
		delete(m.waiting, cl)
		delete(m.ready, cl)
		return
	}
	m.waiting[cl] = true
	if cl.cands.Len() == 0 && cl.unmarked > 0 || cl.cands.Len() > 0 && m.view(cl.cands.ps[0]).Room() > 0 {
		m.ready[cl] = true
	} else {
		delete(m.ready, cl)
	}
}

// roomChanged restores p's place in the candidate heap of every class it
// serves after its room changed: O(classes of p · log pools).
func (m *model) roomChanged(p *pool) {
	for cl := range p.classes {
		heap.Fix(&cl.cands, cl.cands.at[p])
		m.touch(cl)
	}
}

func (m *model) classFor(req job.Labels) *class {
	k := req.Key()
	cl := m.classes[k]
	if cl == nil {
		cl = &class{key: k, req: req, hidx: -1, cands: candHeap{m: m, at: map[*pool]int{}}}
		for _, p := range m.pools {
			if m.view(p).Serves(req) {
				m.addCand(cl, p)
			}
		}
		m.classes[k] = cl
	}
	return cl
}

func (m *model) pool(name string) *pool {
	p := m.pools[name]
	if p == nil {
		p = &pool{name: name, facs: map[string]job.FactoryInfo{}, classes: map[*class]bool{}}
		m.pools[name] = p
	}
	return p
}

// putFactory records a registration or heartbeat; nil info removes id.
func (m *model) putFactory(id string, info *job.FactoryInfo) {
	if old, ok := m.facs[id]; ok {
		p := m.pools[old.Pool]
		delete(p.facs, id)
		m.recomputePool(p)
		delete(m.facs, id)
		if len(p.facs) == 0 {
			p.deadSince = time.Now()
		}
	}
	if info != nil {
		m.facs[id] = *info
		p := m.pool(info.Pool)
		p.facs[id] = *info
		p.deadSince = time.Time{}
		m.recomputePool(p)
	}
}

// expireFactories forgets factories not seen for ttl.
func (m *model) expireFactories(now time.Time, ttl time.Duration) (gone []string) {
	for id, f := range m.facs {
		if now.Sub(f.LastSeen) > ttl {
			m.putFactory(id, nil)
			gone = append(gone, id)
		}
	}
	return gone
}

func (m *model) recomputePool(p *pool) {
	var caps job.Labels
	slots := 0
	first := true
	for _, f := range p.facs {
		if first {
			caps, first = f.Caps, false
		} else {
			caps = caps.Intersect(f.Caps)
		}
		slots += f.Slots
	}
	changed := slots != p.slots || caps.Key() != p.caps.Key()
	p.caps, p.slots = caps, slots
	if changed {
		m.poolChanged(p)
	}
}

// poolChanged brings every class's candidate pools up to date with p's
// capabilities and liveness: O(classes) per change of a pool, where
// recomputing each class's candidates from every pool was O(classes ×
// pools) — with 1,000 pools, a quarter of the coordinator's CPU as
// factories came and went.
func (m *model) poolChanged(p *pool) {
	v := m.view(p)
	for _, cl := range m.classes {
		if v.Serves(cl.req) {
			m.addCand(cl, p)
		} else {
			m.dropCand(cl, p)
		}
	}
	m.roomChanged(p) // its slots may have changed too
}

func (m *model) addCand(cl *class, p *pool) {
	if _, ok := cl.cands.at[p]; !ok {
		heap.Push(&cl.cands, p)
		p.classes[cl] = true
		m.touch(cl)
	}
}

func (m *model) dropCand(cl *class, p *pool) {
	if i, ok := cl.cands.at[p]; ok {
		heap.Remove(&cl.cands, i)
		delete(p.classes, cl)
		m.touch(cl)
	}
}

func (m *model) view(p *pool) scheduler.Pool {
	pf := m.prefetch
	if m.gateOff {
		pf = 1 << 30
	}
	return scheduler.Pool{Name: p.name, Caps: p.caps, Factories: len(p.facs), Slots: p.slots, Inflight: p.inflight, Prefetch: pf}
}

// candidates are the live pools that can run cl's jobs.
func (m *model) candidates(cl *class) []string {
	names := make([]string, len(cl.cands.ps))
	for i, p := range cl.cands.ps {
		names[i] = p.name
	}
	return names
}

// order is one decision of the gate.
type order struct {
	e    *entry
	pool string
}

// admit releases up to budget queued jobs into pools with room, best job
// first; it also returns up to markBudget jobs no live pool can serve that
// are not yet marked unroutable. It looks only at the ready classes (see
// touch); each release costs O(log classes + classes of its pool · log
// pools), whatever the number of jobs, pools and factories.
func (m *model) admit(budget, markBudget int) (orders []order, unroutable []*entry) {
	var heads classHeap
	for cl := range m.ready {
		if cl.cands.Len() == 0 {
			unroutable = cl.toMark(unroutable, markBudget)
			continue
		}
		heads = append(heads, cl)
	}
	heap.Init(&heads)
	for heads.Len() > 0 && len(orders) < budget {
		cl := heap.Pop(&heads).(*class)
		best := cl.cands.ps[0] // the best candidate: if it has no room, none has
		if m.view(best).Room() <= 0 {
			continue
		}
		e := cl.pop()
		e.pending, e.pool = true, best.name
		best.inflight++
		m.roomChanged(best)
		m.touch(cl)
		orders = append(orders, order{e: e, pool: best.name})
		if cl.q.Len() > 0 {
			heap.Push(&heads, cl)
		}
	}
	return orders, unroutable
}

// toMark adds to out (up to budget in all) queued jobs of a class no live
// pool serves that are not flagged unroutable yet. It looks at no more
// than markScan entries per call, resuming where the last call stopped, so
// a class holding many jobs costs O(1) per gate round once they are all
// flagged, and O(markScan) while some are not.
func (cl *class) toMark(out []*entry, budget int) []*entry {
	n := cl.q.Len()
	for i := 0; i < min(n, markScan) && cl.unmarked > 0 && len(out) < budget; i++ {
		cl.scan = (cl.scan + 1) % n
		if e := cl.q[cl.scan]; !e.unroutable && !e.marking {
			e.marking = true
			out = append(out, e)
		}
	}
	return out
}

// markScan bounds the entries one gate round looks at per unroutable class.
const markScan = 1024

// undo puts back a job whose dispatch did not happen.
func (m *model) undo(e *entry) {
	if !e.pending || m.jobs[e.id] != e {
		return
	}
	m.leave(e)
	e.pending, e.pool = false, ""
	m.enter(e)
}

// dueRetries pops failed jobs whose backoff is over.
func (m *model) dueRetries(now time.Time, budget int) []*entry {
	var out []*entry
	for m.retries.Len() > 0 && len(out) < budget && m.retries[0].retryAt <= now.UnixNano() {
		e := heap.Pop(&m.retries).(*entry)
		e.pending = true
		out = append(out, e)
	}
	return out
}

// backlog is a heap of queued entries in scheduler order.
type backlog []*entry

func (b backlog) Len() int           { return len(b) }
func (b backlog) Less(i, j int) bool { return scheduler.Before(b[i].item(), b[j].item()) }
func (b backlog) Swap(i, j int)      { b[i], b[j] = b[j], b[i]; b[i].qidx = i; b[j].qidx = j }
func (b *backlog) Push(x any)        { e := x.(*entry); e.qidx = len(*b); *b = append(*b, e) }
func (b *backlog) Pop() any {
	old := *b
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*b = old[:len(old)-1]
	e.qidx = -1
	return e
}

// classHeap orders classes by their best queued job.
type classHeap []*class

func (h classHeap) Len() int { return len(h) }
func (h classHeap) Less(i, j int) bool {
	return scheduler.Before(h[i].q[0].item(), h[j].q[0].item())
}
func (h classHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *classHeap) Push(x any)   { *h = append(*h, x.(*class)) }
func (h *classHeap) Pop() any {
	old := *h
	c := old[len(old)-1]
	*h = old[:len(old)-1]
	return c
}

// retryHeap orders failed jobs by when their backoff ends.
type retryHeap []*entry

func (r retryHeap) Len() int           { return len(r) }
func (r retryHeap) Less(i, j int) bool { return r[i].retryAt < r[j].retryAt }
func (r retryHeap) Swap(i, j int)      { r[i], r[j] = r[j], r[i]; r[i].ridx = i; r[j].ridx = j }
func (r *retryHeap) Push(x any)        { e := x.(*entry); e.ridx = len(*r); *r = append(*r, e) }
func (r *retryHeap) Pop() any {
	old := *r
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*r = old[:len(old)-1]
	e.ridx = -1
	return e
}
