// Package integration runs coordinators and factories together on a real
// embedded JetStream server, in process.
package integration

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/coordinator"
	"github.com/agentqueue/fleet/factory"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// Test timings: short leases so lease tests finish in seconds.
const (
	testLease = 2 * time.Second
	testRenew = 400 * time.Millisecond
)

type fleet struct {
	t     *testing.T
	url   string
	srv   *testenv.Server
	b     *broker.Broker
	jobs  *broker.Jobs
	log   *zap.Logger
	coord *coordinator.Coordinator
}

func testLogger(t *testing.T) *zap.Logger {
	return zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
}

// startFleet runs an embedded server and one coordinator.
func startFleet(t *testing.T, mod ...func(*coordinator.Config)) *fleet {
	t.Helper()
	srv := testenv.RunServer(t)
	f := &fleet{t: t, url: srv.URL(), srv: srv, log: testLogger(t)}
	f.b = f.connect("test-client")
	f.coord = f.startCoordinator(mod...)
	var err error
	if f.jobs, err = f.b.OpenJobs(context.Background()); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fleet) connect(name string) *broker.Broker {
	f.t.Helper()
	b, err := broker.Connect(broker.Config{URLs: f.url, Name: name}, f.log)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(b.Close)
	return b
}

func testCoordConfig() coordinator.Config {
	return coordinator.Config{
		LeaseTTL: testLease, RenewEvery: testRenew, FactoryTTL: 3 * time.Second,
		Backoff:         job.Backoff{Base: 50 * time.Millisecond, Max: 200 * time.Millisecond},
		QueueStateEvery: 100 * time.Millisecond, LeaderTTL: time.Second,
	}
}

func (f *fleet) startCoordinator(mod ...func(*coordinator.Config)) *coordinator.Coordinator {
	f.t.Helper()
	c := f.startCoordinatorNoWait(mod...)
	testenv.Eventually(f.t, 10*time.Second, c.IsLeader, "coordinator never became leader")
	return c
}

// startCoordinatorNoWait starts a coordinator and waits until it serves,
// not until it leads.
func (f *fleet) startCoordinatorNoWait(mod ...func(*coordinator.Config)) *coordinator.Coordinator {
	c, _ := f.runCoordinator(mod...)
	return c
}

// runningFactory is a factory on its own connection.
type runningFactory struct {
	*factory.Factory
	b      *broker.Broker
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// stop asks the factory to stop gracefully and waits; it may be called twice.
func (r *runningFactory) stop(t *testing.T) {
	r.once.Do(func() {
		r.cancel()
		if err := <-r.done; err != nil {
			t.Errorf("factory %s: %v", r.ID(), err)
		}
		r.b.Close()
	})
}

func (f *fleet) startFactory(cfg factory.Config) *runningFactory {
	return f.startFactoryOn(f.url, cfg)
}

func (f *fleet) startFactoryOn(url string, cfg factory.Config) *runningFactory {
	f.t.Helper()
	b, err := broker.Connect(broker.Config{URLs: url, Name: "factory"}, f.log)
	if err != nil {
		f.t.Fatal(err)
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 500 * time.Millisecond
	}
	if cfg.FetchWait == 0 {
		cfg.FetchWait = time.Second
	}
	fa, err := factory.New(b, cfg, f.log)
	if err != nil {
		f.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningFactory{Factory: fa, b: b, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- fa.Run(ctx) }()
	f.t.Cleanup(func() { r.stop(f.t) })
	select {
	case <-fa.Ready():
	case err := <-r.done:
		f.t.Fatalf("factory did not start: %v", err)
	case <-time.After(20 * time.Second):
		f.t.Fatal("factory not ready after 20s")
	}
	return r
}

func (f *fleet) submit(spec job.Spec) broker.Verdict {
	f.t.Helper()
	data, _ := json.Marshal(spec)
	v, err := f.b.Submit(context.Background(), spec.Product, spec.IdempotencyKey, data, 10*time.Second)
	if err != nil {
		f.t.Fatalf("submit: %v", err)
	}
	if v.Status != broker.StatusAccepted && v.Status != broker.StatusDuplicate {
		f.t.Fatalf("submit: verdict %+v", v)
	}
	return v
}

func (f *fleet) record(id string) job.Record {
	f.t.Helper()
	r, _, err := f.jobs.Get(context.Background(), id)
	if err != nil {
		f.t.Fatalf("get %s: %v", id, err)
	}
	return r
}

// waitState waits until job id is in one of states.
func (f *fleet) waitState(id string, d time.Duration, states ...job.State) job.Record {
	f.t.Helper()
	var r job.Record
	testenv.Eventually(f.t, d, func() bool {
		var err error
		r, _, err = f.jobs.Get(context.Background(), id)
		return err == nil && slices.Contains(states, r.State)
	}, "job %s: want %v, have %s (%s)", id, states, lazyState{&r}, lazyErr{&r})
	return r
}

type lazyState struct{ r *job.Record }

func (l lazyState) String() string { return string(l.r.State) }

type lazyErr struct{ r *job.Record }

func (l lazyErr) String() string { return l.r.LastError }

// events returns every event of job id, in stream order, once the history
// has caught up with the record (events are published after the record's
// CAS, so a reader can see the record first).
func (f *fleet) events(id string) []job.Event {
	f.t.Helper()
	var evs []job.Event
	testenv.Eventually(f.t, 10*time.Second, func() bool {
		_, rev, err := f.jobs.Get(context.Background(), id)
		if err != nil {
			return false
		}
		evs = readAll(f.t, f.b.JS, subjects.StreamEvents, subjects.EventsForJob(id), func(m jetstream.Msg) job.Event {
			e, err := job.DecodeEvent(m.Data())
			if err != nil {
				f.t.Fatalf("bad event: %v", err)
			}
			return e
		})
		return slices.ContainsFunc(evs, func(e job.Event) bool { return e.Rev == rev })
	}, "job %s: no event for its current record revision", id)
	return evs
}

// readAll reads every message on filter in stream with an ordered consumer.
func readAll[T any](t *testing.T, js jetstream.JetStream, stream, filter string, fn func(jetstream.Msg) T) []T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	if n == 0 {
		return nil
	}
	oc, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatal(err)
	}
	var out []T
	for uint64(len(out)) < n {
		m, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("read %s: %v (have %d of %d)", filter, err, len(out), n)
		}
		out = append(out, fn(m))
	}
	return out
}

// checkHistory asserts a job's events chain and each step is legal. Events
// are ordered by the record revision they wrote: the stream's order is the
// publishers', which several coordinators cannot agree on.
func checkHistory(t *testing.T, id string, evs []job.Event) {
	t.Helper()
	evs = slices.Clone(evs)
	slices.SortStableFunc(evs, func(a, b job.Event) int { return cmp.Compare(a.Rev, b.Rev) })
	var cur job.State
	for i, e := range evs {
		if i == 0 {
			if e.From != "" || e.To != job.Queued {
				t.Fatalf("job %s: history starts %s→%s", id, e.From, e.To)
			}
		} else if e.From != cur {
			t.Fatalf("job %s: event %d goes from %s but the job was %s (gap)", id, i, e.From, cur)
		} else if err := job.CheckTransition(e.From, e.To); err != nil {
			t.Fatalf("job %s: event %d: %v", id, i, err)
		}
		cur = e.To
	}
}

func sh(script string) []string { return []string{"sh", "-c", script} }

var errTimeout = errors.New("timeout")

func fmtStates(rs []job.Record) string {
	m := map[job.State]int{}
	for _, r := range rs {
		m[r.State]++
	}
	return fmt.Sprint(m)
}

type lazy func() string

func (l lazy) String() string { return l() }

// unfinished describes the jobs among ids that have not succeeded.
func (f *fleet) unfinished(ids []string) string {
	var out []string
	for _, id := range ids {
		r, rev, err := f.jobs.Get(context.Background(), id)
		if err != nil {
			out = append(out, id+": "+err.Error())
		} else if r.State != job.Succeeded {
			out = append(out, fmt.Sprintf("%s: %s rev %d gen %d epoch %d owner %s lease %s err %q", id, r.State, rev, r.DispatchGen,
				r.Epoch, r.Owner, r.LeaseUntil.Format("15:04:05.000"), r.LastError))
		}
		if len(out) > 10 {
			break
		}
	}
	return fmt.Sprint(len(out), " unfinished (first 10): ", out)
}
