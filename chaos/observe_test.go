//go:build linux

package chaos

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// --- reading the broker ---

func (e *env) ctx(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// records reads every record of fleet_jobs.
func (e *env) records() (map[string]job.Record, error) {
	ctx, cancel := e.ctx(20 * time.Second)
	defer cancel()
	kv, err := e.js.KeyValue(ctx, subjects.BucketJobs)
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := map[string]job.Record{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case u, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("watch closed")
			}
			if u == nil {
				return out, nil
			}
			r, err := job.DecodeRecord(u.Value())
			if err != nil {
				return nil, fmt.Errorf("record %s: %w", u.Key(), err)
			}
			out[u.Key()] = r
		}
	}
}

// readStream calls fn for every message of stream, in order.
func (e *env) readStream(name string, fn func(jetstream.Msg) error) error {
	ctx, cancel := e.ctx(60 * time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, name)
	if err != nil {
		return err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil
	}
	c, err := e.js.OrderedConsumer(ctx, name, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	it, err := c.Messages()
	if err != nil {
		return err
	}
	defer it.Stop()
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return fmt.Errorf("read %s: %w", name, err)
		}
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if err := fn(m); err != nil {
			return err
		}
		if md.Sequence.Stream >= last {
			return nil
		}
	}
}

// events reads every event of FLEET_EVENTS.
func (e *env) events() ([]StoredEvent, error) {
	var out []StoredEvent
	err := e.readStream(subjects.StreamEvents, func(m jetstream.Msg) error {
		md, _ := m.Metadata()
		ev, err := job.DecodeEvent(m.Data())
		if err != nil {
			return fmt.Errorf("event %d: %w", md.Sequence.Stream, err)
		}
		out = append(out, StoredEvent{Event: ev, Seq: md.Sequence.Stream, Stored: md.Timestamp})
		return nil
	})
	return out, err
}

// streamMsgs is how many messages a stream holds now.
func (e *env) streamMsgs(name string) (uint64, error) {
	ctx, cancel := e.ctx(5 * time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, name)
	if err != nil {
		return 0, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.Msgs, nil
}

// held lists the running jobs each factory holds now: factory → job → epoch.
func (e *env) held() map[string]map[string]uint64 {
	recs, err := e.records()
	if err != nil {
		return nil
	}
	out := map[string]map[string]uint64{}
	for id, r := range recs {
		if r.State == job.Running {
			if out[r.Owner] == nil {
				out[r.Owner] = map[string]uint64{}
			}
			out[r.Owner][id] = r.Epoch
		}
	}
	return out
}

// busiestFactory waits (up to d) until a live factory holds at least one
// running job, and returns the one holding the most.
func (e *env) busiestFactory(d time.Duration) (*factoryNode, map[string]uint64) {
	e.t.Helper()
	var best *factoryNode
	var most map[string]uint64
	poll(d, func() bool {
		best, most = nil, nil
		all := e.held()
		for _, f := range e.aliveFactories() {
			if h := all[f.id]; best == nil || len(h) > len(most) {
				best, most = f, h
			}
		}
		return len(most) > 0
	})
	if best == nil {
		e.t.Fatalf("%s: no live factory", e.name)
	}
	return best, most
}

// poll checks cond every 100ms until it holds (true) or d passes (false).
// For waits whose timeout is not itself a failure (the checker then says
// what is wrong, with evidence); testenv.Eventually otherwise.
func poll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// --- the end of a scenario ---

// drain waits until every acknowledged job and every record is finished and
// no submission waits in FLEET_INGEST. It reports false at the deadline
// (the checker then lists what is not finished).
func (e *env) drain(d time.Duration) bool {
	subs := e.submissions()
	var why string
	ok := poll(d, func() bool {
		recs, err := e.records()
		if err != nil {
			why = err.Error()
			return false
		}
		for _, s := range subs {
			if r, ok := recs[s.JobID]; !ok || !r.State.Terminal() {
				why = fmt.Sprintf("acked job %s is %s", s.JobID, orMissing(r.State, ok))
				return false
			}
		}
		for id, r := range recs {
			if !r.State.Terminal() {
				why = fmt.Sprintf("job %s is %s", id, r.State)
				return false
			}
		}
		n, err := e.streamMsgs(subjects.StreamIngest)
		if err != nil || n > 0 {
			why = fmt.Sprintf("FLEET_INGEST holds %d submissions (%v)", n, err)
			return false
		}
		return true
	})
	if !ok {
		e.t.Logf("%s: not drained within %v: %s", e.name, d, why)
	}
	return ok
}

// diagnose describes, for a fleet that did not drain, where its unfinished
// jobs are: their records, whether FLEET_JOBS holds a message for them, and
// the pool consumers' state.
func (e *env) diagnose() []string {
	var out []string
	recs, err := e.records()
	if err != nil {
		return []string{"diagnose: " + err.Error()}
	}
	stuck := map[string]job.Record{}
	for id, r := range recs {
		if !r.State.Terminal() {
			stuck[id] = r
		}
	}
	msgs := map[string][]string{}
	err = e.readStream(subjects.StreamJobs, func(m jetstream.Msg) error {
		md, _ := m.Metadata()
		id := m.Headers().Get(subjects.HeaderJobID)
		if _, ok := stuck[id]; ok {
			msgs[id] = append(msgs[id], fmt.Sprintf("seq %d gen %s", md.Sequence.Stream, m.Headers().Get(subjects.HeaderDispatchGen)))
		}
		return nil
	})
	if err != nil {
		out = append(out, "diagnose: read FLEET_JOBS: "+err.Error())
	}
	if len(stuck) <= 10 {
		ids := slices.Collect(maps.Keys(stuck))
		out = append(out, e.logLines(ids, 40)...)
	}
	byState := map[job.State]int{}
	for _, r := range stuck {
		byState[r.State]++
	}
	out = append(out, fmt.Sprintf("diagnose: %d unfinished jobs by state: %v", len(stuck), byState))
	// The rarer states first: they say more.
	ids := slices.SortedFunc(maps.Keys(stuck), func(a, b string) int {
		return cmp.Or(cmp.Compare(byState[stuck[a].State], byState[stuck[b].State]), cmp.Compare(a, b))
	})
	for i, id := range ids {
		if i == 10 {
			out = append(out, fmt.Sprintf("diagnose: … %d more unfinished jobs", len(ids)-10))
			break
		}
		r := stuck[id]
		out = append(out, fmt.Sprintf("diagnose: job %s is %s (pool %q, dispatch_gen %d, epoch %d, stream_seq %d, updated %s); FLEET_JOBS messages for it: %v",
			id, r.State, r.Pool, r.DispatchGen, r.Epoch, r.StreamSeq, clock(r.Updated), msgs[id]))
	}
	ctx, cancel := e.ctx(10 * time.Second)
	defer cancel()
	if s, err := e.js.Stream(ctx, subjects.StreamJobs); err == nil {
		if info, err := s.Info(ctx); err == nil {
			out = append(out, fmt.Sprintf("diagnose: FLEET_JOBS holds %d messages, seq %d..%d", info.State.Msgs, info.State.FirstSeq, info.State.LastSeq))
		}
		for name := range s.ConsumerNames(ctx).Name() {
			c, err := s.Consumer(ctx, name)
			if err != nil {
				continue
			}
			ci, err := c.Info(ctx)
			if err != nil {
				continue
			}
			out = append(out, fmt.Sprintf("diagnose: consumer %s: pending %d, ack pending %d, redelivered %d, waiting %d, delivered stream seq %d, ack floor stream seq %d",
				name, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Delivered.Stream, ci.AckFloor.Stream))
		}
	}
	return out
}

// logLines returns the log lines of every process of the scenario that
// mention one of ids (at most max).
func (e *env) logLines(ids []string, max int) []string {
	e.mu.Lock()
	procs := slices.Clone(e.procs)
	e.mu.Unlock()
	var out []string
	for _, p := range procs {
		for _, l := range strings.Split(p.Stdout()+"\n"+p.Stderr(), "\n") {
			for _, id := range ids {
				if strings.Contains(l, id) {
					if len(out) == max {
						return append(out, "log: … more omitted")
					}
					out = append(out, "log: "+strings.TrimSpace(l))
					break
				}
			}
		}
	}
	return out
}

// queueDrift reads fleet_queue_state's total once the fleet has drained: the
// leader's model should then count nothing queued, dispatched or running.
// It returns "" when it does (within a few seconds), else what it counts.
func (e *env) queueDrift() string {
	var why string
	ok := poll(6*time.Second, func() bool {
		ctx, cancel := e.ctx(3 * time.Second)
		defer cancel()
		kv, err := e.js.KeyValue(ctx, subjects.BucketQueueState)
		if err != nil {
			why = err.Error()
			return false
		}
		ent, err := kv.Get(ctx, subjects.QueueStateTotal)
		if err != nil {
			why = err.Error()
			return false
		}
		var qs job.QueueState
		if err := json.Unmarshal(ent.Value(), &qs); err != nil {
			why = err.Error()
			return false
		}
		why = fmt.Sprintf("leader %s counts queued %d, dispatched %d, running %d, retry-waiting %d (written %s)",
			qs.Leader, qs.Queued, qs.Dispatched, qs.Running, qs.RetryWaiting, clock(qs.Updated))
		return qs.Queued+qs.Dispatched+qs.Running+qs.RetryWaiting == 0
	})
	if ok {
		return ""
	}
	return why
}

// leaderChangeProbe is run, after the checker, on a fleet that did not
// drain: it changes the leader (SIGTERM, so it hands over at once; a lone
// coordinator is started again) and reports whether the stuck jobs then
// finish — i.e. whether only a rebuild of the leader's model from fleet_jobs
// repairs them.
func (e *env) leaderChangeProbe() string {
	recs, err := e.records()
	if err != nil {
		return "leader-change probe: " + err.Error()
	}
	var stuck []string
	for id, r := range recs {
		if !r.State.Terminal() {
			stuck = append(stuck, id)
		}
	}
	if len(stuck) == 0 {
		return ""
	}
	l := e.waitLeader(30 * time.Second)
	l.p.Signal(syscall.SIGTERM)
	l.p.Wait(30 * time.Second)
	changed := time.Now()
	if len(e.coords) == 1 {
		e.startCoordinator(l)
	}
	done := 0
	var left []string
	poll(60*time.Second, func() bool {
		recs, err := e.records()
		if err != nil {
			return false
		}
		done, left = 0, nil
		for _, id := range stuck {
			if r := recs[id]; r.State.Terminal() {
				done++
			} else {
				left = append(left, fmt.Sprintf("%s %s gen %d", id, r.State, r.DispatchGen))
			}
		}
		return done == len(stuck)
	})
	return fmt.Sprintf("leader-change probe: %d of %d jobs stuck unfinished for the whole drain deadline finished within %v of a leader change (SIGTERM to leader %s); still unfinished: %v",
		done, len(stuck), time.Since(changed).Round(100*time.Millisecond), l.id, left)
}

func orMissing(s job.State, ok bool) string {
	if !ok {
		return "missing"
	}
	return string(s)
}

// waitJobsGone waits until no process of this scenario's jobs is alive
// (orphans of killed factories included), so the ledger is final.
func (e *env) waitJobsGone(d time.Duration) {
	marker := "CHAOS_RUN=" + e.run
	if !poll(d, func() bool { return len(procsWithEnv(marker)) == 0 }) {
		left := procsWithEnv(marker)
		e.t.Logf("%s: %d job processes still alive after %v; killing them: %v", e.name, len(left), d, left)
		signalGroups(left, syscall.SIGKILL, map[int]bool{syscall.Getpgrp(): true})
	}
}

// collect reads what the checker needs. Events are relayed by the leader
// after their record is written: it reads again (for a while) while the
// histories do not yet account for every record.
func (e *env) collect(fault string) Input {
	e.t.Helper()
	e.mu.Lock()
	faults := slices.Clone(e.faults)
	e.mu.Unlock()
	in := Input{Fault: fault, Submissions: e.submissions(), Faults: faults}
	testenv.Eventually(e.t, 60*time.Second, func() bool {
		recs, err := e.records()
		if err != nil {
			return false
		}
		evs, err := e.events()
		if err != nil {
			return false
		}
		in.Records, in.Events = recs, evs
		return true
	}, "%s: cannot read fleet_jobs and FLEET_EVENTS", e.name)
	poll(10*time.Second, func() bool {
		if Check(in).HistoryGaps == 0 {
			return true
		}
		if evs, err := e.events(); err == nil {
			in.Events = evs
		}
		return false
	})
	in.Effects = e.ledger.Effects()
	return in
}

// fencedCalls sums, over the live coordinators, the control calls refused
// for a stale epoch or another owner, by verb.
func (e *env) fencedCalls() map[string]int {
	out := map[string]int{}
	re := regexp.MustCompile(`^fleet_control_calls_total\{(.*)\}\s+(\S+)$`)
	for _, c := range e.coords {
		cl := http.Client{Timeout: 2 * time.Second}
		resp, err := cl.Get("http://" + c.http + "/fleet/metrics")
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			m := re.FindStringSubmatch(sc.Text())
			if m == nil || !(strings.Contains(m[1], `code="stale_epoch"`) || strings.Contains(m[1], `code="not_owner"`)) {
				continue
			}
			verb := regexp.MustCompile(`verb="([^"]*)"`).FindStringSubmatch(m[1])
			n, _ := strconv.ParseFloat(m[2], 64)
			if verb != nil {
				out[verb[1]] += int(n)
			}
		}
		resp.Body.Close()
	}
	return out
}

// summarize counts a process's output lines matching re by their first
// two submatches ("what: why").
func summarize(p *testenv.Process, re *regexp.Regexp) string {
	counts := map[string]int{}
	for _, l := range strings.Split(p.Stderr(), "\n") {
		if m := re.FindStringSubmatch(l); m != nil {
			counts[strings.Join(m[1:], ": ")]++
		}
	}
	if len(counts) == 0 {
		return "nothing fenced"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%d× %s", counts[k], k))
	}
	return strings.Join(parts, "; ")
}
