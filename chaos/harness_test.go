//go:build linux

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/agentqueue/fleet/job"
	"github.com/agentqueue/fleet/subjects"
	"github.com/agentqueue/fleet/testenv"
)

// Settings every scenario runs with.
const (
	product = "chaos"
	// leaseTTL is the lease (and pool ack wait). Not lower: a factory
	// heartbeats every 5s (not settable from the CLI) and the coordinator's
	// factory TTL defaults to the lease, so below ~5.5s live factories are
	// declared lost between heartbeats (see the report).
	leaseTTL       = 6 * time.Second
	renewSec       = 1
	retryBase      = 200 * time.Millisecond
	retryMax       = 2 * time.Second
	maxAttempts    = 10 // checker jobs: enough to ride out several faults
	poisonAttempts = 3
	submitMin      = 60 * time.Millisecond // between submissions of the steady load
	submitMax      = 120 * time.Millisecond
	jobSleepMin    = 200 // ms a checker job sleeps before its lease check
	jobSleepMax    = 800
)

// checkerScript is the checker job: take a little time, check the lease,
// then record the effect in the ledger. The stamp taken before the check
// tells the ledger when the check began.
const checkerScript = `sleep "$CHAOS_SLEEP" && t=$("$CHAOS_LEDGERCLIENT" stamp) && "$CHAOS_FLEET" lease check && exec "$CHAOS_LEDGERCLIENT" write "$t"`

// uncheckedScript is the checker job without its lease check. Setting
// CHAOS_MUTATE=no-lease-check runs it instead: the suite must then report
// stale effects (it proves the checker can see them).
const uncheckedScript = `sleep "$CHAOS_SLEEP" && t=$("$CHAOS_LEDGERCLIENT" stamp) && exec "$CHAOS_LEDGERCLIENT" write "$t"`

// poisonScript always fails.
const poisonScript = `sleep 0.1; echo "poison: this job always fails" >&2; exit 3`

// bins are the binaries the suite runs.
type bins struct{ fleet, ledger string }

func buildBins(t *testing.T) bins {
	t.Helper()
	fleet := testenv.BuildFleet(t, "github.com/agentqueue/fleet/cmd/fleet")
	ledger := filepath.Join(t.TempDir(), "ledgerclient")
	if out, err := exec.Command("go", "build", "-o", ledger, "github.com/agentqueue/fleet/chaos/ledgerclient").CombinedOutput(); err != nil {
		t.Fatalf("go build ledgerclient: %v\n%s", err, out)
	}
	return bins{fleet: fleet, ledger: ledger}
}

// fleetOpts shapes a scenario's fleet.
type fleetOpts struct {
	brokers      int // 1, or 3 for a cluster
	coordinators int
	factories    int
	slots        int
}

type brokerNode struct {
	name string
	port int
	args []string
	p    *testenv.Process
}

func (b *brokerNode) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", b.port) }

type coordNode struct {
	id, http string
	args     []string
	p        *testenv.Process
}

type factoryNode struct {
	id    string
	p     *testenv.Process
	alive bool
}

// env is one scenario's fleet: real `fleet` processes, the ledger, the
// load, and a client of the broker for the checker.
type env struct {
	t    *testing.T
	name string
	bins bins
	dir  string
	run  string // marker in the environment of everything this scenario starts
	opts fleetOpts

	ledger  *Ledger
	brokers []*brokerNode
	coords  []*coordNode
	urls    string
	nc      *nats.Conn
	js      jetstream.JetStream

	mu      sync.Mutex
	procs   []*testenv.Process // every process started, for their logs
	facs    []*factoryNode
	nextFac int
	faults  []Fault
	subs    []Submission
	pubErrs int
}

func newEnv(t *testing.T, name string, b bins, opts fleetOpts) *env {
	t.Helper()
	e := &env{t: t, name: name, bins: b, dir: t.TempDir(), run: name + "-" + nuid.Next(), opts: opts}
	var err error
	if e.ledger, err = StartLedger(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.ledger.Close() })
	// Whatever a scenario started and left behind (orphaned jobs of a
	// killed factory, say) is killed at the end.
	t.Cleanup(func() {
		skip := map[int]bool{syscall.Getpgrp(): true}
		signalGroups(procsWithEnv("CHAOS_RUN="+e.run), syscall.SIGKILL, skip)
		signalGroups(procsWithEnv("CHAOS_SCENARIO="+e.run), syscall.SIGKILL, skip)
	})

	ports := freePorts(t, 2*opts.brokers)
	var routes []string
	for i := range opts.brokers {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", ports[opts.brokers+i]))
	}
	var urls []string
	for i := range opts.brokers {
		bn := &brokerNode{name: fmt.Sprintf("n%d", i), port: ports[i]}
		bn.args = []string{"broker", "--store-dir", filepath.Join(e.dir, bn.name), "--port", strconv.Itoa(bn.port)}
		if opts.brokers > 1 {
			bn.args = append(bn.args, "--server-name", bn.name, "--cluster-port", strconv.Itoa(ports[opts.brokers+i]),
				"--routes", strings.Join(routes, ","))
		}
		e.brokers = append(e.brokers, bn)
		urls = append(urls, bn.url())
	}
	e.urls = strings.Join(urls, ",")
	for _, bn := range e.brokers {
		e.startBroker(bn)
	}
	e.connect()
	e.waitJetStream()

	httpPorts := freePorts(t, opts.coordinators)
	for i := range opts.coordinators {
		c := &coordNode{id: fmt.Sprintf("c%d", i+1), http: fmt.Sprintf("127.0.0.1:%d", httpPorts[i])}
		c.args = []string{"coordinator", "--url", e.urls, "--http", c.http, "--id", c.id, "--log-level", "debug",
			"--lease-ttl", leaseTTL.String(), "--lease-renew-sec", strconv.Itoa(renewSec),
			"--retry-base", retryBase.String(), "--retry-max", retryMax.String()}
		if opts.brokers > 1 {
			c.args = append(c.args, "--replicas", "3")
		}
		e.coords = append(e.coords, c)
		e.startCoordinator(c)
	}
	e.waitLeader(30 * time.Second)
	for range opts.factories {
		e.startFactory()
	}
	return e
}

func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("reserve a port: %v", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

var (
	reBrokerUp  = regexp.MustCompile(`broker listening on`)
	reCoordUp   = regexp.MustCompile(`coordinator serving`)
	reLeading   = regexp.MustCompile(`\bleading\b`)
	reFactoryUp = regexp.MustCompile(`factory running`)
)

func (e *env) scenarioEnv() []string { return []string{"CHAOS_SCENARIO=" + e.run} }

// track remembers a process for logLines.
func (e *env) track(p *testenv.Process) *testenv.Process {
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p
}

func (e *env) startBroker(bn *brokerNode) {
	e.t.Helper()
	bn.p = e.track(testenv.StartProcess(e.t, e.scenarioEnv(), e.bins.fleet, bn.args...))
	bn.p.WaitLine(30*time.Second, reBrokerUp)
}

func (e *env) startCoordinator(c *coordNode) {
	e.t.Helper()
	c.p = e.track(testenv.StartProcess(e.t, e.scenarioEnv(), e.bins.fleet, c.args...))
	c.p.WaitLine(30*time.Second, reCoordUp)
}

// startFactory starts a new factory (a new id) and waits until it runs.
func (e *env) startFactory() *factoryNode {
	e.t.Helper()
	e.mu.Lock()
	e.nextFac++
	f := &factoryNode{id: fmt.Sprintf("f%d", e.nextFac), alive: true}
	e.mu.Unlock()
	f.p = e.track(testenv.StartProcess(e.t, append(e.scenarioEnv(), "CHAOS_FACTORY="+e.factoryMarker(f.id)), e.bins.fleet,
		"factory", "--url", e.urls, "--slots", strconv.Itoa(e.opts.slots), "--grace", "1s", "--id", f.id, "--log-level", "debug"))
	f.p.WaitLine(30*time.Second, reFactoryUp)
	e.mu.Lock()
	e.facs = append(e.facs, f)
	e.mu.Unlock()
	return f
}

func (e *env) factoryMarker(id string) string { return e.run + "/" + id }

func (e *env) aliveFactories() []*factoryNode {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []*factoryNode
	for _, f := range e.facs {
		if f.alive {
			out = append(out, f)
		}
	}
	return out
}

// connect opens the checker's own client. It notices a frozen node within
// a few seconds (unlike the fleet's own clients, which use nats.go's
// default two-minute ping interval) and never buffers publishes while
// disconnected, so an unacknowledged submission fails at once.
func (e *env) connect() {
	e.t.Helper()
	nc, err := nats.Connect(e.urls, nats.Name("chaos-checker"), nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond), nats.ReconnectBufSize(-1), nats.Timeout(2*time.Second),
		nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
	if err != nil {
		e.t.Fatalf("connect to %s: %v", e.urls, err)
	}
	e.t.Cleanup(nc.Close)
	e.nc = nc
	if e.js, err = jetstream.New(nc); err != nil {
		e.t.Fatal(err)
	}
}

// waitJetStream waits until JetStream answers and, on a cluster, can place
// a three-replica stream (so coordinators can provision at once).
func (e *env) waitJetStream() {
	e.t.Helper()
	testenv.Eventually(e.t, 60*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if _, err := e.js.AccountInfo(ctx); err != nil {
			return false
		}
		if len(e.brokers) == 1 {
			return true
		}
		s, err := e.js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "CHAOS_PROBE", Subjects: []string{"chaos.probe"},
			Replicas: 3, Storage: jetstream.MemoryStorage})
		if err != nil {
			return false
		}
		_ = e.js.DeleteStream(ctx, s.CachedInfo().Config.Name)
		return true
	}, "JetStream not ready on %s", e.urls)
}

// health asks a coordinator's /healthz whether it leads.
func health(addr string) (leader bool, ok bool) {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return false, false
	}
	defer resp.Body.Close()
	var h struct {
		Coordinator string `json:"coordinator"`
		Leader      bool   `json:"leader"`
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&h) != nil {
		return false, false
	}
	return h.Leader, true
}

// waitLeader waits until exactly one coordinator says it leads.
func (e *env) waitLeader(d time.Duration) *coordNode {
	e.t.Helper()
	var leader *coordNode
	testenv.Eventually(e.t, d, func() bool {
		leader = nil
		n := 0
		for _, c := range e.coords {
			if l, _ := health(c.http); l {
				leader = c
				n++
			}
		}
		return n == 1
	}, "no single leader among coordinators")
	return leader
}

// fault records an injected fault (now).
func (e *env) fault(what string, factories ...string) {
	e.mu.Lock()
	e.faults = append(e.faults, Fault{What: what, At: time.Now(), Factories: factories})
	e.mu.Unlock()
	e.t.Logf("%s: fault: %s", e.name, what)
}

// hold lets a fault (or the load between faults) last d. Sleeping here is
// the point: it is the duration of the fault, not a synchronisation.
func hold(d time.Duration) { time.Sleep(d) }

// --- load ---

// checkerSpec is the spec of one checker job.
func (e *env) checkerSpec(key string) job.Spec {
	sleep := float64(jobSleepMin+rand.IntN(jobSleepMax-jobSleepMin+1)) / 1000
	script := checkerScript
	if os.Getenv("CHAOS_MUTATE") == "no-lease-check" {
		script = uncheckedScript
	}
	return job.Spec{Product: product, Title: key, Command: []string{"sh", "-c", script},
		Env: map[string]string{"CHAOS_RUN": e.run, "CHAOS_LEDGER": e.ledger.Addr(), "CHAOS_FLEET": e.bins.fleet,
			"CHAOS_LEDGERCLIENT": e.bins.ledger, "CHAOS_SLEEP": strconv.FormatFloat(sleep, 'f', 3, 64)},
		MaxAttempts: maxAttempts, TimeoutSec: 120, IdempotencyKey: key}
}

func (e *env) poisonSpec(key string) job.Spec {
	return job.Spec{Product: product, Title: key, Command: []string{"sh", "-c", poisonScript},
		Env: map[string]string{"CHAOS_RUN": e.run}, MaxAttempts: poisonAttempts, TimeoutSec: 60, IdempotencyKey: key}
}

// submit publishes a submission on fleet.ingest.chaos with its idempotency
// key as the message id, retrying (same key) a few times; it counts as
// acknowledged only once JetStream acks it.
func (e *env) submit(key string, spec job.Spec, poison bool, stop <-chan struct{}) bool {
	data, err := json.Marshal(spec)
	if err != nil {
		e.t.Errorf("encode spec: %v", err)
		return false
	}
	for range 5 {
		msg := nats.NewMsg(subjects.Ingest(product))
		msg.Data = data
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := e.js.PublishMsg(ctx, msg, jetstream.WithMsgID(product+":"+key))
		cancel()
		if err == nil {
			e.mu.Lock()
			e.subs = append(e.subs, Submission{Key: key, JobID: job.IDForKey(product, key), AckedAt: time.Now(), Poison: poison})
			e.mu.Unlock()
			return true
		}
		e.mu.Lock()
		e.pubErrs++
		e.mu.Unlock()
		select {
		case <-stop:
			return false
		case <-time.After(200 * time.Millisecond): // retry pacing
		}
	}
	return false
}

// load is the steady submission of checker jobs.
type load struct {
	stop, done chan struct{}
}

func (e *env) startLoad() *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for i := 0; ; i++ {
			key := fmt.Sprintf("%s-%05d", e.name, i)
			e.submit(key, e.checkerSpec(key), false, l.stop)
			select {
			case <-l.stop:
				return
			case <-time.After(submitMin + rand.N(submitMax-submitMin)): // load pacing
			}
		}
	}()
	e.t.Cleanup(l.Stop)
	return l
}

func (l *load) Stop() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

func (e *env) submissions() []Submission {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.subs)
}

// --- faults ---

// killFactory kill -9s a factory (only the factory process: its jobs run in
// their own process groups and are orphaned, as they would be).
func (e *env) killFactory(f *factoryNode) {
	e.t.Helper()
	f.p.Signal(syscall.SIGKILL)
	e.fault("kill -9 factory "+f.id, f.id)
	f.p.Wait(10 * time.Second)
	e.mu.Lock()
	f.alive = false
	e.mu.Unlock()
}

// pause says how a factory is paused.
type pause struct {
	d    time.Duration // how long it stays stopped
	jobs bool          // stop every process it started too, as on a paused host
	// jobsFirst resumes the jobs this long before the factory, so they reach
	// their lease check (and effect) before the factory's lease keeper,
	// waking, kills them.
	jobsFirst time.Duration
}

func (p pause) String() string {
	if !p.jobs {
		return fmt.Sprintf("%v, its jobs run on", p.d)
	}
	return fmt.Sprintf("%v with its jobs, jobs resumed %v first", p.d, p.jobsFirst)
}

// pauseFactory SIGSTOPs a factory (and, as asked, its jobs), keeps it
// stopped, then SIGCONTs it.
func (e *env) pauseFactory(f *factoryNode, how pause) {
	e.t.Helper()
	marker := "CHAOS_FACTORY=" + e.factoryMarker(f.id)
	skip := map[int]bool{syscall.Getpgrp(): true, f.p.Pid(): true}
	f.p.Signal(syscall.SIGSTOP)
	e.fault(fmt.Sprintf("SIGSTOP factory %s for %v", f.id, how), f.id)
	var groups []int
	if how.jobs {
		// The factory first (it starts no job after this), then its jobs,
		// twice to catch a group forked in between.
		for range 2 {
			for _, g := range signalGroups(procsWithEnv(marker), syscall.SIGSTOP, skip) {
				skip[g] = true
				groups = append(groups, g)
			}
		}
		e.t.Logf("%s: %s stopped with %d process groups of jobs", e.name, f.id, len(groups))
	}
	hold(how.d - how.jobsFirst)
	for _, g := range groups {
		_ = syscall.Kill(-g, syscall.SIGCONT)
	}
	hold(how.jobsFirst)
	f.p.Signal(syscall.SIGCONT)
}

func (e *env) killCoordinator(c *coordNode) {
	e.t.Helper()
	c.p.Signal(syscall.SIGKILL)
	e.fault("kill -9 coordinator " + c.id)
	c.p.Wait(10 * time.Second)
}

func (e *env) killBroker(b *brokerNode) {
	e.t.Helper()
	b.p.Signal(syscall.SIGKILL)
	e.fault("kill -9 broker " + b.name)
	b.p.Wait(10 * time.Second)
}

// leads lists the fleet streams a node leads now.
func (e *env) leads(node string) []string {
	var out []string
	for _, s := range clusterStreams {
		if l, _ := e.streamLeader(s); l == node {
			out = append(out, s)
		}
	}
	return out
}

// streamLeader names the node leading a stream ("" if none answers).
func (e *env) streamLeader(stream string) (leader string, followers []string) {
	ctx, cancel := e.ctx(3 * time.Second)
	defer cancel()
	s, err := e.js.Stream(ctx, stream)
	if err != nil {
		return "", nil
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return "", nil
	}
	for _, p := range info.Cluster.Replicas {
		followers = append(followers, p.Name)
	}
	return info.Cluster.Leader, followers
}

func (e *env) broker(name string) *brokerNode {
	for _, b := range e.brokers {
		if b.name == name {
			return b
		}
	}
	e.t.Fatalf("no broker %q", name)
	return nil
}

// clusterStreams are the streams whose replicas must be whole before the
// cluster counts as healthy again.
var clusterStreams = []string{subjects.StreamIngest, subjects.StreamJobs, subjects.StreamEvents, "KV_" + subjects.BucketJobs}

// clusterHealth returns "" when every fleet stream has a leader and two
// current, online followers, or what is missing.
func (e *env) clusterHealth() string {
	for _, name := range clusterStreams {
		ctx, cancel := e.ctx(3 * time.Second)
		s, err := e.js.Stream(ctx, name)
		var info *jetstream.StreamInfo
		if err == nil {
			info, err = s.Info(ctx)
		}
		cancel()
		switch {
		case err != nil:
			return fmt.Sprintf("%s: %v", name, err)
		case info.Cluster == nil || info.Cluster.Leader == "":
			return name + ": no leader"
		case len(info.Cluster.Replicas) != 2:
			return fmt.Sprintf("%s: %d followers", name, len(info.Cluster.Replicas))
		}
		for _, p := range info.Cluster.Replicas {
			if !p.Current || p.Offline {
				return fmt.Sprintf("%s: follower %s current=%v offline=%v lag=%d", name, p.Name, p.Current, p.Offline, p.Lag)
			}
		}
	}
	return ""
}

func (e *env) waitClusterHealthy(d time.Duration) {
	e.t.Helper()
	var why string
	testenv.Eventually(e.t, d, func() bool {
		why = e.clusterHealth()
		return why == ""
	}, "%s: cluster not healthy: %s", e.name, lazyString(func() string { return why }))
}

type lazyString func() string

func (l lazyString) String() string { return l() }
