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
// It walks the pools and the classes with queued jobs (and the queued jobs
// of a class only when they have more than one priority, for their ages).
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
			Factories: len(p.facs), Slots: p.slots, FreeSlots: max(0, p.slots-p.running),
			Running: p.running, Dispatched: p.inflight - p.running}
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
	var oldest int64
	for cl := range m.waiting {
		n := cl.q.Len()
		total.Queued += n
		clOldest := cl.oldest()
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

// queueStateRefresh is how often an unchanged queue state is written again
// (its "updated" field tells readers the leader is alive).
const queueStateRefresh = 10 * time.Second

// queueStateWriter stores the leader's queue states in fleet_queue_state off
// the leader loop: the loop hands it the latest states (a newer one replaces
// one not yet written), and it writes only the keys whose counts changed or
// that were last written queueStateRefresh ago, and deletes the keys of
// pools that are gone. With a thousand pools, a synchronous write of every
// key each second held the gate back.
func (c *Coordinator) queueStateWriter(ctx context.Context, in <-chan map[string]job.QueueState) {
	type written struct {
		body []byte // the state without its time
		at   time.Time
	}
	last := map[string]written{}
	if keys, err := c.qs.ListKeys(ctx); err == nil {
		for k := range keys.Keys() {
			last[k] = written{} // another leader's: rewritten or deleted below
		}
	}
	for {
		var states map[string]job.QueueState
		select {
		case <-ctx.Done():
			return
		case states = <-in:
		}
		now := time.Now()
		for k, v := range states {
			stamp := v.Updated
			v.Updated = time.Time{}
			body, _ := json.Marshal(v)
			if w, ok := last[k]; ok && string(w.body) == string(body) && now.Sub(w.at) < queueStateRefresh {
				continue
			}
			v.Updated = stamp
			data, _ := json.Marshal(v)
			if _, err := c.qs.Put(ctx, k, data); err != nil {
				c.log.Debug("queue state not written", zap.String("key", k), zap.Error(err))
				continue
			}
			last[k] = written{body, now}
		}
		for k := range last {
			if _, ok := states[k]; !ok {
				if err := c.qs.Delete(ctx, k); err == nil {
					delete(last, k)
				}
			}
		}
	}
}
