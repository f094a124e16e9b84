//go:build linux

package chaos

import (
	"cmp"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// A scenario is one kind of fault, injected into its own fleet (its own
// broker(s), coordinators, factories and ledger) under a steady load.
type scenario struct {
	name string
	opts fleetOpts
	// inject runs while the load runs. It may return a check of its own,
	// applied to the checker's input after the fleet drained.
	inject func(e *env) func(in Input, row *Row)
}

var (
	single  = fleetOpts{brokers: 1, coordinators: 1, factories: 3, slots: 3}
	standby = fleetOpts{brokers: 1, coordinators: 2, factories: 3, slots: 3}
	cluster = fleetOpts{brokers: 3, coordinators: 2, factories: 3, slots: 3}
)

// scenarios, longest first so that parallel runs overlap them.
var scenarios = []scenario{
	{"cluster-node-kill9", cluster, clusterNodeKill},
	{"cluster-node-pause", cluster, clusterNodePause},
	{"factory-pause-zombie", single, factoryPause},
	{"factory-kill9", single, factoryKill},
	{"coordinator-kill9-restart", single, coordinatorKill},
	{"coordinator-leader-failover", standby, leaderFailover},
	{"broker-kill9-restart", single, brokerKill},
	{"poison-job", fleetOpts{brokers: 1, coordinators: 1, factories: 2, slots: 3}, poisonJobs},
}

// TestChaos runs every fault scenario against real `fleet` processes and
// prints (and writes as JSON) the checker's table: one row per fault.
func TestChaos(t *testing.T) {
	b := buildBins(t)
	started := time.Now()
	mode := pick("short", "soak")
	path := *reportFlag
	switch {
	case path != "":
	case soak():
		path = "chaos-report.json"
	default:
		path = filepath.Join(t.TempDir(), "chaos-report.json")
	}

	var mu sync.Mutex
	var rows []Row
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		order := func(r Row) int {
			return slices.IndexFunc(scenarios, func(s scenario) bool { return s.name == r.Fault })
		}
		slices.SortFunc(rows, func(a, b Row) int { return cmp.Compare(order(a), order(b)) })
		t.Logf("chaos fault table (%s mode, lease %v, %v):\n%s", mode, leaseTTL, time.Since(started).Round(time.Second), FormatTable(rows))
		rep := Report{Mode: mode, Started: started, DurationSec: time.Since(started).Seconds(), Definitions: Definitions, Rows: rows,
			Settings: map[string]string{
				"lease_ttl": leaseTTL.String(), "lease_renew_sec": fmt.Sprint(renewSec),
				"retry_base": retryBase.String(), "retry_max": retryMax.String(),
				"submit_every": fmt.Sprintf("%v..%v", submitMin, submitMax),
				"job_sleep":    fmt.Sprintf("%dms..%dms", jobSleepMin, jobSleepMax),
				"max_attempts": fmt.Sprint(maxAttempts), "poison_max_attempts": fmt.Sprint(poisonAttempts),
			}}
		if err := WriteReport(path, rep); err != nil {
			t.Errorf("write report: %v", err)
		} else {
			t.Logf("report written to %s", path)
		}
	})

	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			row := &Row{Fault: sc.name, Violations: []string{"scenario aborted before the checker ran (see the test log)"}}
			defer func() {
				mu.Lock()
				rows = append(rows, *row)
				mu.Unlock()
			}()
			runScenario(t, b, sc, row)
		})
	}
}

// runScenario runs one scenario and leaves the checker's row in out (also
// when the test then fails or is skipped).
func runScenario(t *testing.T, b bins, sc scenario, out *Row) {
	start := time.Now()
	e := newEnv(t, sc.name, b, sc.opts)
	ld := e.startLoad()
	// The fleet must be finishing jobs before the first fault.
	testenv.Eventually(t, 60*time.Second, func() bool { return e.countState(job.Succeeded) >= 5 },
		"%s: no job finished before any fault", sc.name)

	verify := sc.inject(e)
	hold(pick(3*time.Second, 10*time.Second)) // steady load after the last fault
	ld.Stop()

	drained := e.drain(pick(60*time.Second, 5*time.Minute))
	var diagnosis []string
	if !drained {
		diagnosis = e.diagnose()
	}
	drift := ""
	if drained {
		drift = e.queueDrift()
	}
	e.waitJobsGone(30 * time.Second)
	in := e.collect(sc.name)
	row := Check(in)
	row.FencedCalls = e.fencedCalls()
	if drift != "" {
		row.ModelDrift = drift
		row.Notes = append(row.Notes, "every record is finished, yet fleet_queue_state (the leader's model) disagrees: "+drift)
	}
	if verify != nil {
		verify(in, &row)
	}
	e.mu.Lock()
	if e.pubErrs > 0 {
		row.Notes = append(row.Notes, fmt.Sprintf("%d publish attempts failed (not acknowledged; retried under the same key)", e.pubErrs))
	}
	e.mu.Unlock()
	if !drained {
		row.Notes = append(row.Notes, "the fleet did not drain within the deadline")
		row.Notes = append(row.Notes, diagnosis...)
	}
	for i, f := range in.Faults {
		row.Notes = append(row.Notes, fmt.Sprintf("fault %d at %s: %s; recovery %dms", i+1, clock(f.At), f.What, row.RecoveryMs[i]))
	}
	row.Pass = len(row.Violations) == 0
	if !drained {
		// After the checker ran: does a leader change repair the stuck jobs?
		if probe := e.leaderChangeProbe(); probe != "" {
			row.Notes = append(row.Notes, probe)
		}
	}
	row.DurationSec = time.Since(start).Seconds()
	*out = row

	t.Logf("%s:\n%s", sc.name, FormatTable([]Row{row}))
	for _, n := range row.Notes {
		t.Logf("note: %s", n)
	}
	if len(row.FencedCalls) > 0 {
		t.Logf("fenced control calls by verb: %v", row.FencedCalls)
	}
	if !row.Pass {
		t.Errorf("%s: the fleet broke its promises: %s\n  %s", sc.name, strings.Join(row.Violations, ", "), strings.Join(row.Evidence, "\n  "))
	}
}

// fail adds a scenario-specific violation and its evidence.
func fail(row *Row, headline string, evidence ...string) {
	row.Violations = append(row.Violations, headline)
	row.Evidence = append(row.Evidence, evidence...)
	row.Pass = false
}

func (e *env) countState(s job.State) int {
	recs, err := e.records()
	if err != nil {
		return 0
	}
	n := 0
	for _, r := range recs {
		if r.State == s {
			n++
		}
	}
	return n
}

// 1. A factory is kill -9ed while it runs jobs, repeatedly; a replacement
// starts each time. Its jobs' children are orphaned and keep running.
func factoryKill(e *env) func(Input, *Row) {
	for range pick(2, 8) {
		f, held := e.busiestFactory(15 * time.Second)
		e.killFactory(f)
		e.t.Logf("%s: killed %s holding %d running jobs; starting a replacement", e.name, f.id, len(held))
		e.startFactory()
		hold(pick(3*time.Second, 6*time.Second))
	}
	return nil
}

// 2. A factory is SIGSTOPped past its lease, then SIGCONTed: the zombie
// must change nothing. Rounds cycle through: the factory process alone
// (its jobs finish meanwhile; it wakes to report them); the factory with
// its jobs, as on a paused host, the jobs waking just before the factory
// (their lease checks must be refused); and the same with a pause that ends
// right around the takeover (the newer epoch is claimed but may not have
// made its effect yet). Nothing the zombie held may be completed under the
// epoch it held, and no effect of its may be stale.
func factoryPause(e *env) func(Input, *Row) {
	type zombie struct {
		id   string
		at   time.Time
		held map[string]uint64
		p    *testenv.Process
	}
	rounds := []pause{
		{d: leaseTTL + 2*time.Second},
		{d: leaseTTL + 2*time.Second, jobs: true, jobsFirst: 200 * time.Millisecond},
		{d: leaseTTL + 500*time.Millisecond, jobs: true, jobsFirst: 200 * time.Millisecond},
	}
	var zs []zombie
	for i := range pick(3, 9) {
		f, held := e.busiestFactory(15 * time.Second)
		at := time.Now()
		e.pauseFactory(f, rounds[i%len(rounds)])
		e.t.Logf("%s: resumed %s, which held %d running jobs when stopped", e.name, f.id, len(held))
		zs = append(zs, zombie{id: f.id, at: at, held: held, p: f.p})
		hold(pick(3*time.Second, 6*time.Second))
	}
	reFenced := regexp.MustCompile(`(lease refused|run abandoned|outcome not recorded|release refused).*"error": "([^"]*)"`)
	return func(in Input, row *Row) {
		byJob := map[string][]StoredEvent{}
		for _, ev := range in.Events {
			byJob[ev.JobID] = append(byJob[ev.JobID], ev)
		}
		for _, z := range zs {
			var bad []string
			for id, epoch := range z.held {
				for _, ev := range byJob[id] {
					if ev.Epoch != epoch || !ev.At.After(z.at.Add(time.Second)) {
						continue
					}
					byZombie := ev.To == job.Succeeded || ev.To == job.Failed ||
						ev.To == job.Dead && !strings.HasPrefix(ev.Reason, "lease lost on every")
					if byZombie {
						bad = append(bad, fmt.Sprintf("ZOMBIE: job %s: %s→%s under epoch %d (held by paused %s) at %s, %v after the pause began",
							id, ev.From, ev.To, epoch, z.id, clock(ev.At), ev.At.Sub(z.at).Round(time.Millisecond)))
					}
				}
				if r, ok := in.Records[id]; ok && r.Epoch == epoch && r.Owner == z.id && r.State == job.Succeeded && r.Finished.After(z.at.Add(time.Second)) {
					bad = append(bad, fmt.Sprintf("ZOMBIE: job %s finished under the paused factory's epoch %d at %s", id, epoch, clock(r.Finished)))
				}
			}
			if len(bad) > 0 {
				fail(row, fmt.Sprintf("%d outcomes of zombie %s accepted", len(bad), z.id), bad...)
			}
			row.Notes = append(row.Notes, fmt.Sprintf("zombie %s held %d running jobs when paused; its log (whole life) holds: %s",
				z.id, len(z.held), summarize(z.p, reFenced)))
		}
	}
}

// 3a. The only coordinator is kill -9ed and restarted (same id, as a
// supervisor would), repeatedly.
func coordinatorKill(e *env) func(Input, *Row) {
	c := e.coords[0]
	for range pick(2, 6) {
		e.killCoordinator(c)
		hold(time.Second) // down time
		e.startCoordinator(c)
		c.p.WaitLine(20*time.Second, reLeading)
		hold(pick(3*time.Second, 6*time.Second))
	}
	return nil
}

// 3b. The leader is kill -9ed with a standby running: leadership must move
// within a few seconds (LeaderTTL is 5s); the old one comes back as standby.
func leaderFailover(e *env) func(Input, *Row) {
	const within = 12 * time.Second
	var moves []string
	var slow []string
	for range pick(1, 4) {
		l := e.waitLeader(30 * time.Second)
		other := e.coords[0]
		if other == l {
			other = e.coords[1]
		}
		e.killCoordinator(l)
		killed := time.Now()
		testenv.Eventually(e.t, 30*time.Second, func() bool { lead, _ := health(other.http); return lead },
			"%s: standby %s never took over from %s", e.name, other.id, l.id)
		moved := time.Since(killed).Round(10 * time.Millisecond)
		moves = append(moves, fmt.Sprintf("leadership moved %s → %s %v after kill -9", l.id, other.id, moved))
		if moved > within {
			slow = append(slow, fmt.Sprintf("LEADER: leadership took %v to move from %s to %s (limit %v)", moved, l.id, other.id, within))
		}
		e.startCoordinator(l) // back, as a standby
		hold(pick(3*time.Second, 6*time.Second))
	}
	return func(in Input, row *Row) {
		row.Notes = append(row.Notes, moves...)
		if len(slow) > 0 {
			fail(row, fmt.Sprintf("%d slow leader takeovers", len(slow)), slow...)
		}
	}
}

// 4. In a 3-node cluster, the node leading FLEET_JOBS, then a follower, is
// kill -9ed and restarted on its store directory and ports.
func clusterNodeKill(e *env) func(Input, *Row) {
	var notes []string
	for i := range pick(2, 6) {
		var leader string
		var followers []string
		testenv.Eventually(e.t, 30*time.Second, func() bool {
			leader, followers = e.streamLeader(subjects.StreamJobs)
			return leader != "" && len(followers) > 0
		}, "%s: FLEET_JOBS has no leader", e.name)
		name, role := leader, "FLEET_JOBS leader"
		if i%2 == 1 {
			name, role = followers[0], "FLEET_JOBS follower"
		}
		if led := e.leads(name); len(led) > 0 {
			role += ", leading " + strings.Join(led, " ")
		}
		b := e.broker(name)
		b.p.Signal(syscall.SIGKILL)
		e.fault(fmt.Sprintf("kill -9 broker %s (%s)", name, role))
		killed := time.Now()
		b.p.Wait(10 * time.Second)
		if i%2 == 0 {
			testenv.Eventually(e.t, 30*time.Second, func() bool {
				l, _ := e.streamLeader(subjects.StreamJobs)
				return l != "" && l != name
			}, "%s: FLEET_JOBS elected no new leader after %s died", e.name, name)
			l, _ := e.streamLeader(subjects.StreamJobs)
			notes = append(notes, fmt.Sprintf("FLEET_JOBS leadership moved %s → %s within %v", name, l, time.Since(killed).Round(10*time.Millisecond)))
		}
		hold(2 * time.Second) // down time
		e.startBroker(b)
		e.waitClusterHealthy(90 * time.Second)
		notes = append(notes, fmt.Sprintf("%s back and the cluster whole %v after the kill", name, time.Since(killed).Round(10*time.Millisecond)))
		hold(pick(2*time.Second, 6*time.Second))
	}
	return func(in Input, row *Row) { row.Notes = append(row.Notes, notes...) }
}

// 5. In a 3-node cluster, a node (the FLEET_JOBS leader; in soak mode also
// the fleet_jobs leader and a follower) is SIGSTOPped past the election
// timeout (nats-server: 4–9s), then SIGCONTed.
func clusterNodePause(e *env) func(Input, *Row) {
	const pause = 10 * time.Second
	targets := pick([]string{subjects.StreamJobs}, []string{subjects.StreamJobs, "KV_" + subjects.BucketJobs, "follower",
		subjects.StreamJobs, "KV_" + subjects.BucketJobs, "follower"})
	var notes []string
	for _, target := range targets {
		var leader string
		var followers []string
		stream := target
		if target == "follower" {
			stream = subjects.StreamJobs
		}
		testenv.Eventually(e.t, 30*time.Second, func() bool {
			leader, followers = e.streamLeader(stream)
			return leader != "" && len(followers) > 0
		}, "%s: %s has no leader", e.name, stream)
		name, role := leader, "leader of "+stream
		if target == "follower" {
			name, role = followers[0], "follower of "+stream
		}
		if led := e.leads(name); len(led) > 0 {
			role += ", leading " + strings.Join(led, " ")
		}
		b := e.broker(name)
		b.p.Signal(syscall.SIGSTOP)
		e.fault(fmt.Sprintf("SIGSTOP broker %s (%s) for %v", name, role, pause))
		stopped := time.Now()
		if target != "follower" {
			moved := poll(pause, func() bool { l, _ := e.streamLeader(stream); return l != "" && l != name })
			l, _ := e.streamLeader(stream)
			notes = append(notes, fmt.Sprintf("%s leadership moved from paused %s: %v (now %q, %v after the stop)",
				stream, name, moved, l, time.Since(stopped).Round(10*time.Millisecond)))
		}
		hold(pause - time.Since(stopped))
		b.p.Signal(syscall.SIGCONT)
		e.waitClusterHealthy(90 * time.Second)
		notes = append(notes, fmt.Sprintf("%s resumed; cluster whole %v after the stop", name, time.Since(stopped).Round(10*time.Millisecond)))
		hold(pick(2*time.Second, 6*time.Second))
	}
	return func(in Input, row *Row) { row.Notes = append(row.Notes, notes...) }
}

// 6. The single-node broker (fsync before every ack) is kill -9ed and
// restarted: every acknowledged submission must survive.
func brokerKill(e *env) func(Input, *Row) {
	b := e.brokers[0]
	for range pick(1, 4) {
		e.killBroker(b)
		hold(time.Second) // down time
		e.startBroker(b)
		hold(pick(3*time.Second, 6*time.Second))
	}
	return nil
}

// 7. Poison jobs (always exit 3) die with their reason after their attempts,
// and are kept in FLEET_DEAD, while the other jobs keep finishing.
func poisonJobs(e *env) func(Input, *Row) {
	var ids []string
	for i := range pick(3, 10) {
		key := fmt.Sprintf("%s-poison-%02d", e.name, i)
		e.fault("poison job " + key + " submitted")
		if e.submit(key, e.poisonSpec(key), true, nil) {
			ids = append(ids, job.IDForKey(product, key))
		}
		hold(pick(time.Second, 2*time.Second))
	}
	return func(in Input, row *Row) {
		dead := map[string][2]string{} // job id → kind, reason in FLEET_DEAD
		err := e.readStream(subjects.StreamDead, func(m jetstream.Msg) error {
			h := m.Headers()
			dead[h.Get(subjects.HeaderJobID)] = [2]string{h.Get(subjects.HeaderKind), h.Get(subjects.HeaderReason)}
			return nil
		})
		if err != nil {
			fail(row, "FLEET_DEAD unreadable: "+err.Error())
			return
		}
		var bad []string
		var firstAck, lastDeath time.Time
		for _, s := range in.Submissions {
			if s.Poison && (firstAck.IsZero() || s.AckedAt.Before(firstAck)) {
				firstAck = s.AckedAt
			}
		}
		for _, id := range ids {
			r, ok := in.Records[id]
			want := fmt.Sprintf("failed %d of %d attempts; last: exit code 3", poisonAttempts, poisonAttempts)
			switch {
			case !ok:
				bad = append(bad, fmt.Sprintf("POISON: job %s has no record", id))
				continue
			case r.State != job.Dead || r.Attempt != poisonAttempts || r.LastError != want:
				bad = append(bad, fmt.Sprintf("POISON: job %s is %s after %d attempts with reason %q; want dead after %d with %q",
					id, r.State, r.Attempt, r.LastError, poisonAttempts, want))
			}
			if d := dead[id]; d[0] != "dead" || d[1] == "" {
				bad = append(bad, fmt.Sprintf("POISON: job %s not kept in FLEET_DEAD with a reason (kind %q, reason %q)", id, d[0], d[1]))
			}
			if r.Finished.After(lastDeath) {
				lastDeath = r.Finished
			}
		}
		// The pool kept working meanwhile: checker jobs succeeded while the
		// poison jobs were failing.
		during := 0
		for _, ev := range in.Events {
			if ev.To == job.Succeeded && ev.At.After(firstAck) && ev.At.Before(lastDeath) {
				during++
			}
		}
		row.Notes = append(row.Notes, fmt.Sprintf("%d poison jobs dead; %d other jobs succeeded between the first poison submission and the last poison death (%v)",
			len(ids), during, lastDeath.Sub(firstAck).Round(10*time.Millisecond)))
		if floor := int(lastDeath.Sub(firstAck) / time.Second); during < floor {
			bad = append(bad, fmt.Sprintf("POISON: only %d jobs succeeded in the %v the poison jobs took to die: the pool stalled",
				during, lastDeath.Sub(firstAck).Round(10*time.Millisecond)))
		}
		if row.Dead != len(ids) {
			bad = append(bad, fmt.Sprintf("POISON: %d acknowledged jobs dead, want exactly the %d poison jobs", row.Dead, len(ids)))
		}
		if len(bad) > 0 {
			fail(row, fmt.Sprintf("%d poison-job failures", len(bad)), bad...)
		}
	}
}
