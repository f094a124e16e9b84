package testenv

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestRunServerPublishAndStream(t *testing.T) {
	t.Parallel()
	s := RunServer(t)
	if s.Server() == nil || !s.Server().JetStreamEnabled() {
		t.Fatal("JetStream not enabled")
	}
	nc := s.Connect(t)

	sub, err := nc.SubscribeSync("hello")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("hello", []byte("world")); err != nil {
		t.Fatal(err)
	}
	msg, err := sub.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if string(msg.Data) != "world" {
		t.Fatalf("got %q", msg.Data)
	}

	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Storage: nats.FileStorage}); err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish("s.one", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if ack.Stream != "S" || ack.Sequence != 1 {
		t.Fatalf("unexpected ack %+v", ack)
	}
}

func TestServerKillRestartKeepsStream(t *testing.T) {
	t.Parallel()
	s := RunServer(t)
	url := s.URL()

	nc := s.Connect(t)
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{Name: "K", Subjects: []string{"k.>"}, Storage: nats.FileStorage}); err != nil {
		t.Fatal(err)
	}
	const n = 10
	for i := range n {
		if _, err := js.Publish("k.x", fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	nc.Close()

	s.Kill()
	if s.Server() != nil {
		t.Fatal("Server() should be nil after Kill")
	}
	s.Kill() // idempotent
	s.Restart(t)
	if s.URL() != url {
		t.Fatalf("URL changed across restart: %s -> %s", url, s.URL())
	}

	nc = s.Connect(t)
	js, err = nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	var info *nats.StreamInfo
	Eventually(t, 10*time.Second, func() bool {
		info, err = js.StreamInfo("K")
		return err == nil
	}, "stream K info after restart: %v", err)
	if info.State.Msgs != n {
		t.Fatalf("after restart stream has %d msgs, want %d", info.State.Msgs, n)
	}
	m, err := js.GetMsg("K", n)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("m%d", n-1); string(m.Data) != want {
		t.Fatalf("last msg %q, want %q", m.Data, want)
	}
}

func TestClusterLeaderFailover(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := RunCluster(t, 3)
	t.Logf("cluster formed in %s", time.Since(start))
	defer func() { t.Logf("total %s", time.Since(start)) }()
	if len(c.Servers) != 3 {
		t.Fatalf("got %d servers", len(c.Servers))
	}
	for i, s := range c.Servers {
		if got, want := s.Server().Name(), fmt.Sprintf("n%d", i); got != want {
			t.Fatalf("node %d named %q, want %q", i, got, want)
		}
	}
	if c.MetaLeader() < 0 {
		t.Fatal("no meta leader after RunCluster")
	}

	nc := c.Connect(t, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	js, err := nc.JetStream(nats.MaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&nats.StreamConfig{
		Name: "R", Subjects: []string{"r.>"}, Storage: nats.FileStorage, Replicas: 3,
	}); err != nil {
		t.Fatalf("add R3 stream after %s: %v", time.Since(start), err)
	}
	t.Logf("stream created at %s", time.Since(start))
	// The stream's subject interest reaches the other nodes asynchronously,
	// so the very first publish may briefly see "no responders".
	Eventually(t, 10*time.Second, func() bool {
		_, err = js.Publish("r.a", []byte("before"), nats.MsgId("before"))
		return err == nil
	}, "first publish to R: %v", lazy(func() string { return fmt.Sprint(err) }))

	old := c.WaitStreamLeader(t, "R", 10*time.Second)
	c.Kill(old)
	if c.Servers[old].Server() != nil {
		t.Fatal("killed node still has a server")
	}

	var leader int
	Eventually(t, 30*time.Second, func() bool {
		leader = c.StreamLeader(t, "R")
		return leader >= 0 && leader != old
	}, "no new leader for stream R after killing node %d", old)

	Eventually(t, 30*time.Second, func() bool {
		_, err = js.Publish("r.a", []byte("after"), nats.MsgId("after"))
		return err == nil
	}, "publish after failover: %v", lazy(func() string { return fmt.Sprint(err) }))

	c.Restart(t, old)
	if c.Servers[old].Server() == nil {
		t.Fatal("restarted node has no server")
	}
	Eventually(t, 30*time.Second, func() bool {
		var info *nats.StreamInfo
		info, err = js.StreamInfo("R")
		if err != nil || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			return false
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current {
				return false
			}
		}
		return info.State.Msgs == 2
	}, "stream R not healthy after restarting node %d: %v", old, lazy(func() string { return fmt.Sprint(err) }))
}

func TestProxyPauseResume(t *testing.T) {
	t.Parallel()
	s := RunServer(t)
	p := NewProxy(t, s.URL())

	direct := s.Connect(t)
	if _, err := direct.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	held, err := direct.SubscribeSync("held")
	if err != nil {
		t.Fatal(err)
	}
	if err := direct.Flush(); err != nil {
		t.Fatal(err)
	}

	nc := connectProxy(t, p)
	if got := nc.ConnectedUrl(); got != p.URL() {
		t.Fatalf("connected to %s, want proxy %s", got, p.URL())
	}
	if _, err := nc.Request("echo", []byte("ping"), 5*time.Second); err != nil {
		t.Fatalf("request through proxy: %v", err)
	}

	p.Pause()
	if _, err := nc.Request("echo", []byte("paused"), 200*time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("request while paused: got %v, want timeout", err)
	}
	if err := nc.Publish("held", []byte("late")); err != nil {
		t.Fatal(err)
	}
	// The publish is held by the proxy, so the subscriber must not see it.
	if _, err := held.NextMsg(100 * time.Millisecond); !errors.Is(err, nats.ErrTimeout) {
		t.Fatalf("held message delivered while paused: %v", err)
	}
	if nc.Status() != nats.CONNECTED {
		t.Fatalf("client status while paused: %v", nc.Status())
	}

	p.Resume()
	m, err := held.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatalf("held message not delivered after resume: %v", err)
	}
	if string(m.Data) != "late" {
		t.Fatalf("held message %q", m.Data)
	}
	resp, err := nc.Request("echo", []byte("again"), 5*time.Second)
	if err != nil {
		t.Fatalf("request after resume: %v", err)
	}
	if string(resp.Data) != "again" {
		t.Fatalf("response %q", resp.Data)
	}

	// Leave the proxy paused with bytes held: cleanup must still stop every
	// proxy goroutine (goleak checks this in TestMain).
	p.Pause()
	if err := nc.Publish("held", []byte("dropped")); err != nil {
		t.Fatal(err)
	}
	if err := nc.FlushTimeout(50 * time.Millisecond); err == nil {
		t.Fatal("flush succeeded through a paused proxy")
	}
}

func TestProxySeverReconnects(t *testing.T) {
	t.Parallel()
	s := RunServer(t)
	p := NewProxy(t, s.URL())

	direct := s.Connect(t)
	if _, err := direct.Subscribe("echo", func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		t.Fatal(err)
	}
	if err := direct.Flush(); err != nil {
		t.Fatal(err)
	}

	reconnected := make(chan struct{}, 1)
	nc := connectProxy(t, p,
		nats.MaxReconnects(-1),
		nats.ReconnectWait(20*time.Millisecond),
		nats.ReconnectHandler(func(*nats.Conn) {
			select {
			case reconnected <- struct{}{}:
			default:
			}
		}),
	)
	if _, err := nc.Request("echo", []byte("1"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 5*time.Second, func() bool { return p.NumConns() == 1 }, "proxy has %d conns", p.NumConns())

	p.Sever()
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("client did not reconnect after Sever")
	}
	if got := nc.Stats().Reconnects; got < 1 {
		t.Fatalf("reconnects = %d", got)
	}
	resp, err := nc.Request("echo", []byte("2"), 5*time.Second)
	if err != nil {
		t.Fatalf("request after reconnect: %v", err)
	}
	if string(resp.Data) != "2" {
		t.Fatalf("response %q", resp.Data)
	}
}

func TestEventually(t *testing.T) {
	t.Parallel()
	n := 0
	Eventually(t, time.Second, func() bool { n++; return n >= 3 }, "never reached 3")
	if n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}

// connectProxy dials through the proxy; a small helper for the proxy tests.
func connectProxy(t *testing.T, p *Proxy, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return connect(t, p.URL(), opts...)
}
