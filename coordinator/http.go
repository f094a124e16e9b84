package coordinator

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/agentqueue/fleet/broker"
	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
)

// httpHandler serves the coordinator's HTTP API:
//
//	GET  /fleet/queue-state   fleet_queue_state as JSON
//	GET  /fleet/metrics       Prometheus exposition
//	POST /fleet/jobs          submit a job spec (JSON body); 202 with the verdict
//	GET  /fleet/jobs/{id}     a job record
//	GET  /healthz             200 once serving
func (c *Coordinator) httpHandler() http.Handler {
	mux := http.NewServeMux()
	c.met.reg.MustRegister(newQueueCollector(c.b.ReadQueueState))
	mux.Handle("GET /fleet/metrics", promhttp.HandlerFor(c.met.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /fleet/queue-state", func(w http.ResponseWriter, r *http.Request) {
		states, err := c.b.ReadQueueState(r.Context())
		if err != nil {
			httpError(w, http.StatusServiceUnavailable, err)
			return
		}
		out := struct {
			Total job.QueueState            `json:"total"`
			Pools map[string]job.QueueState `json:"pools"`
		}{Pools: map[string]job.QueueState{}}
		for k, v := range states {
			if k == subjects.QueueStateTotal {
				out.Total = v
			} else {
				out.Pools[v.Pool] = v
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /fleet/jobs/{id}", func(w http.ResponseWriter, r *http.Request) {
		rec, _, err := c.jobs.Get(r.Context(), r.PathValue("id"))
		if errors.Is(err, job.ErrNotFound) {
			httpError(w, http.StatusNotFound, err)
			return
		}
		if err != nil {
			httpError(w, http.StatusServiceUnavailable, err)
			return
		}
		writeJSON(w, http.StatusOK, rec)
	})
	mux.HandleFunc("POST /fleet/jobs", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, job.MaxSpecBytes+1))
		if err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		// Validation happens where every submission's does: in ingest. Only
		// the routing fields are read here, to name the subject and key.
		var head struct {
			Product        string `json:"product"`
			IdempotencyKey string `json:"idempotency_key"`
		}
		_ = json.Unmarshal(body, &head)
		if err := subjects.CheckToken("product", head.Product); err != nil {
			httpError(w, http.StatusBadRequest, err)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		v, err := c.b.Submit(ctx, head.Product, head.IdempotencyKey, body, 5*time.Second)
		switch {
		case errors.Is(err, broker.ErrRejected):
			writeJSON(w, http.StatusUnprocessableEntity, v)
		case err != nil:
			httpError(w, http.StatusServiceUnavailable, err)
		default:
			writeJSON(w, http.StatusAccepted, v)
		}
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"coordinator": c.cfg.ID, "leader": c.IsLeader()})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func httpError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
