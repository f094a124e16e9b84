package coordinator

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// metrics are this coordinator's Prometheus collectors. Counters count what
// this process did; the queue gauges are read from fleet_queue_state at
// scrape time, so every coordinator reports the leader's view.
type metrics struct {
	reg         *prometheus.Registry
	accepted    prometheus.Counter
	rejected    prometheus.Counter
	duplicates  prometheus.Counter
	stale       prometheus.Counter
	calls       *prometheus.CounterVec
	transitions *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_submissions_accepted_total",
			Help: "Submissions recorded as jobs by this coordinator."}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_submissions_rejected_total",
			Help: "Submissions refused and moved to FLEET_DEAD by this coordinator."}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_submissions_duplicate_total",
			Help: "Submissions whose idempotency key named an existing job."}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{Name: "fleet_stale_epoch_refusals_total",
			Help: "Control calls refused because they carried a stale epoch (a fenced-off factory)."}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_control_calls_total",
			Help: "Control API calls served, by verb and result code."}, []string{"verb", "code"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "fleet_job_transitions_total",
			Help: "Job state transitions written by this coordinator, by new state."}, []string{"state"}),
	}
	m.reg.MustRegister(m.accepted, m.rejected, m.duplicates, m.stale, m.calls, m.transitions)
	return m
}

func (m *metrics) transition(s job.State) { m.transitions.WithLabelValues(string(s)).Inc() }

func (m *metrics) ctl(verb string, reply any) {
	code := "ok"
	var e *job.CtlError
	switch r := reply.(type) {
	case job.ClaimReply:
		e = r.Err
		if e == nil {
			code = string(r.Verdict)
		}
	case job.LeaseReply:
		e = r.Err
	case job.RegisterReply:
		e = r.Err
	}
	if e != nil {
		code = e.Code
	}
	m.calls.WithLabelValues(verb, code).Inc()
}

// queueCollector exports fleet_queue_state as gauges.
type queueCollector struct {
	read func(ctx context.Context) (map[string]job.QueueState, error)
	desc map[string]*prometheus.Desc
}

func newQueueCollector(read func(ctx context.Context) (map[string]job.QueueState, error)) *queueCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("fleet_"+name, help, []string{"pool"}, nil)
	}
	return &queueCollector{read: read, desc: map[string]*prometheus.Desc{
		"queued":            d("queued_jobs", "Jobs waiting in the backlog (per pool: jobs the pool could run)."),
		"unroutable":        d("unroutable_jobs", "Queued jobs no live pool can serve."),
		"dispatched":        d("dispatched_jobs", "Jobs released to a pool, not yet claimed."),
		"running":           d("running_jobs", "Jobs running under a lease."),
		"retry_waiting":     d("retry_waiting_jobs", "Failed jobs waiting out their backoff."),
		"factories":         d("factories", "Live factories."),
		"waiting_factories": d("waiting_factories", "Live factories with a free slot."),
		"slots":             d("slots", "Slots of live factories."),
		"free_slots":        d("free_slots", "Slots not running a job."),
		"oldest":            d("oldest_queued_age_seconds", "Age of the oldest queued job."),
	}}
}

func (q *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range q.desc {
		ch <- d
	}
}

func (q *queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	states, err := q.read(ctx)
	if err != nil {
		return
	}
	for key, s := range states {
		pool := s.Pool
		if key == subjects.QueueStateTotal {
			pool = "_total"
		}
		g := func(name string, v float64) {
			ch <- prometheus.MustNewConstMetric(q.desc[name], prometheus.GaugeValue, v, pool)
		}
		g("queued", float64(s.Queued))
		g("unroutable", float64(s.Unroutable))
		g("dispatched", float64(s.Dispatched))
		g("running", float64(s.Running))
		g("retry_waiting", float64(s.RetryWaiting))
		g("factories", float64(s.Factories))
		g("waiting_factories", float64(s.WaitingFactories))
		g("slots", float64(s.Slots))
		g("free_slots", float64(s.FreeSlots))
		g("oldest", s.OldestQueuedSec)
	}
}
