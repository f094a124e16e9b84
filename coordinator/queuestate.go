package coordinator

import (
	"context"
	"encoding/json"
	"time"

	"go.uber.org/zap"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// queueState computes fleet_queue_state from the model: per pool and total.
// It walks the classes and pools, and the queued jobs once for their ages.
func (c *Coordinator) queueState(m *model, now time.Time) map[string]job.QueueState {
	gate := "on"
	if c.cfg.GateOff {
		gate = "off"
	}
	total := job.QueueState{Gate: gate, Leader: c.cfg.ID, Updated: now}
	per := map[string]*job.QueueState{}
	for _, p := range m.pools {
		if len(p.facs) == 0 && p.inflight == 0 {
			continue
		}
		qs := &job.QueueState{Pool: p.name, Caps: p.caps, Gate: gate, Leader: c.cfg.ID, Updated: now,
			Factories: len(p.facs), Slots: p.slots, FreeSlots: max(0, p.slots-p.running)}
		for _, f := range p.facs {
			if f.Busy < f.Slots {
				qs.WaitingFactories++
			}
		}
		per[p.name] = qs
		total.Factories += qs.Factories
		total.WaitingFactories += qs.WaitingFactories
		total.Slots += qs.Slots
		total.FreeSlots += qs.FreeSlots
	}
	for _, e := range m.jobs {
		switch e.state {
		case job.Dispatched, job.Running:
			if qs := per[e.pool]; qs != nil {
				if e.state == job.Running {
					qs.Running++
				} else {
					qs.Dispatched++
				}
			}
		}
	}
	var oldest int64
	for _, cl := range m.classes {
		n := cl.q.Len()
		if n == 0 {
			continue
		}
		total.Queued += n
		var clOldest int64
		for _, e := range cl.q {
			if clOldest == 0 || e.created < clOldest {
				clOldest = e.created
			}
		}
		if oldest == 0 || clOldest < oldest {
			oldest = clOldest
		}
		cands := m.candidates(cl)
		if len(cands) == 0 {
			total.Unroutable += n
		}
		for _, name := range cands {
			if qs := per[name]; qs != nil {
				qs.Queued += n
				age := now.Sub(time.Unix(0, clOldest)).Seconds()
				qs.OldestQueuedSec = max(qs.OldestQueuedSec, age)
			}
		}
	}
	if oldest != 0 {
		total.OldestQueuedSec = now.Sub(time.Unix(0, oldest)).Seconds()
	}
	total.Dispatched = m.counts[job.Dispatched]
	total.Running = m.counts[job.Running]
	total.Blocked = m.counts[job.Blocked]
	total.RetryWaiting = m.counts[job.Failed]
	out := map[string]job.QueueState{subjects.QueueStateTotal: total}
	for name, qs := range per {
		out[subjects.QueueStatePool(name)] = *qs
	}
	return out
}

// writeQueueState stores the leader's current queue state, and deletes the
// keys of pools that are gone.
func (c *Coordinator) writeQueueState(ctx context.Context, m *model, now time.Time) {
	states := c.queueState(m, now)
	for k, v := range states {
		data, _ := json.Marshal(v)
		if _, err := c.qs.Put(ctx, k, data); err != nil {
			c.log.Debug("queue state not written", zap.String("key", k), zap.Error(err))
			return
		}
	}
	keys, err := c.qs.ListKeys(ctx)
	if err != nil {
		return
	}
	for k := range keys.Keys() {
		if _, ok := states[k]; !ok {
			_ = c.qs.Delete(ctx, k)
		}
	}
}
