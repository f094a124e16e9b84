package coordinator

import (
	"context"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// leaderKey in fleet_config names the current leader coordinator.
const leaderKey = "leader"

// elect campaigns for leadership and runs the leader's duties while it
// holds it. Leadership is the leaderKey in fleet_config, renewed by CAS
// every LeaderTTL/4; a standby takes it over when its revision has not moved
// for LeaderTTL by the standby's own clock (so clock skew does not matter),
// and a leader that has not renewed for LeaderTTL steps down by itself.
func (c *Coordinator) elect(ctx context.Context) {
	var (
		leading   bool
		heldRev   uint64
		renewedAt time.Time
		seenRev   uint64
		seenAt    time.Time
		stop      context.CancelFunc
		done      chan struct{}
	)
	stepDown := func(why string) {
		if !leading {
			return
		}
		leading = false
		stop()
		<-done
		done = nil
		c.setLeader(false)
		c.log.Info("leadership given up", zap.String("reason", why))
	}
	tick := time.NewTicker(c.cfg.LeaderTTL / 4)
	defer tick.Stop()
	for {
		now := time.Now()
		rctx, cancel := context.WithTimeout(ctx, c.cfg.LeaderTTL/2)
		var err error
		e, gerr := c.cfgKV.Get(rctx, leaderKey)
		switch {
		case errors.Is(gerr, jetstream.ErrKeyNotFound) || errors.Is(gerr, jetstream.ErrKeyDeleted):
			heldRev, err = c.cfgKV.Create(rctx, leaderKey, []byte(c.cfg.ID))
			if err == nil {
				renewedAt = now
			}
		case gerr != nil:
			err = gerr
		case string(e.Value()) == c.cfg.ID:
			heldRev, err = c.cfgKV.Update(rctx, leaderKey, []byte(c.cfg.ID), e.Revision())
			if err == nil {
				renewedAt = now
			}
		default:
			if e.Revision() != seenRev {
				seenRev, seenAt = e.Revision(), now
			} else if now.Sub(seenAt) > c.cfg.LeaderTTL {
				if heldRev, err = c.cfgKV.Update(rctx, leaderKey, []byte(c.cfg.ID), e.Revision()); err == nil {
					renewedAt = now
					c.log.Info("took over leadership", zap.String("from", string(e.Value())))
				}
			}
			if err == nil && renewedAt != now {
				stepDown("another coordinator leads: " + string(e.Value()))
			}
		}
		cancel()
		if err != nil && leading && time.Since(renewedAt) > c.cfg.LeaderTTL {
			stepDown("could not renew leadership: " + err.Error())
		}
		if !leading && !renewedAt.IsZero() && renewedAt == now {
			leading = true
			c.setLeader(true)
			c.log.Info("leading")
			stop, done = c.startLeading(ctx)
		}
		select {
		case <-ctx.Done():
			if leading {
				stepDown("shutting down")
				// Hand over at once rather than after LeaderTTL.
				dctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_ = c.cfgKV.Delete(dctx, leaderKey, jetstream.LastRevision(heldRev))
				cancel()
			}
			return
		case <-done:
			// lead returned on its own (an error): give up the key so we retry cleanly.
			stepDown("leader loop ended")
			renewedAt = time.Time{}
		case <-tick.C:
		}
	}
}

// startLeading runs the leader's duties on a goroutine; stop ends them and
// done closes when they have ended.
func (c *Coordinator) startLeading(ctx context.Context) (stop context.CancelFunc, done chan struct{}) {
	lctx, stop := context.WithCancel(ctx)
	done = make(chan struct{})
	go func() {
		defer close(done)
		if err := c.lead(lctx); err != nil && lctx.Err() == nil {
			c.log.Error("leader stopped", zap.Error(err))
		}
	}()
	return stop, done
}

func (c *Coordinator) setLeader(v bool) {
	c.mu.Lock()
	c.isLeader = v
	c.mu.Unlock()
}

// IsLeader reports whether this coordinator currently leads.
func (c *Coordinator) IsLeader() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.isLeader
}
