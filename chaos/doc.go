// Package chaos is fleet's process-level fault suite. It proves (or
// disproves) that no acknowledged job is lost or finished twice under
// crashes, pauses and node loss, using the real `fleet` binary for every
// broker, coordinator and factory, and real signals (SIGKILL, SIGSTOP,
// SIGCONT).
//
// # Running it
//
//	go test -race ./chaos/                      # short mode: every fault once or twice, ~2 minutes
//	go test -count=1 -timeout 60m -run TestChaos -v ./chaos -args -chaos.soak -chaos.report=chaos-report.json
//
// Long (soak) mode (-chaos.soak, or CHAOS_SOAK=1) repeats every fault more
// often under a longer load and writes the JSON report to -chaos.report
// (default chaos-report.json in the package directory). Short mode writes it
// to a temporary directory. Both print the table with t.Log (see it with -v).
// CHAOS_MUTATE=no-lease-check removes `fleet lease check` from the workload:
// the suite must then report stale effects, which shows the checker can see
// them. The process-level suite needs Linux (/proc); the checker does not.
//
// # The workload
//
// Each scenario starts its own fleet (its own broker or 3-node cluster,
// coordinators and ≥2 factories with ≥2 slots), a ledger, and a steady load:
// a job every 60–120ms, published on fleet.ingest.chaos with its idempotency
// key as Nats-Msg-Id; a submission counts only once JetStream acked it. A
// checker job sleeps 0.2–0.8s, takes a timestamp, runs `fleet lease check`,
// then records "job id, epoch, check start" in the ledger (ledgerclient).
// The ledger is fenced like a real side-effect store: it refuses a write
// whose epoch is below one it already accepted for the job, and records the
// refusal. Faults are injected while the load runs; then the load stops,
// the fleet drains (every acknowledged job and every record finished, nothing
// left in FLEET_INGEST, with a deadline), every job process has exited, and
// the checker reads the ledger, fleet_jobs and FLEET_EVENTS.
//
// # What the checker counts
//
// Definitions (also in every JSON report) are in [Definitions]. In short:
// LOST is an acknowledged job neither succeeded nor dead at the end.
// SUCCEEDED TWICE is more than one succeeded event, two accepted effects
// under one epoch, or an effect under an epoch above the one the job
// succeeded under. Two accepted effects under different epochs are not a
// double finish by themselves: a run that made its effect under a
// then-current lease and died before reporting is re-run, which the lease
// protocol allows; those effects are counted as SUPERSEDED. A STALE effect
// is an accepted effect whose lease check began after fleet had stored the
// claim of a newer epoch: the lease check said yes to a superseded lease.
// Every job's events, ordered by record revision, must chain from ""→queued
// through legal transitions (job.CheckTransition) to the record's final
// state: a transition not in the table is ILLEGAL, a break in the chain is
// a GAP (an event missing from the audit trail). RECOVERY is the time from
// each fault to the next job started (a to=running event); TAKEOVER, for a
// factory fault, until every job the factory held was claimed elsewhere.
// Every fault must end with lost = twice = stale = illegal = gaps = 0.
package chaos
