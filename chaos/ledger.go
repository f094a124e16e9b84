package chaos

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Effect is one side-effect write the ledger received from a job.
type Effect struct {
	Job   string `json:"job"`
	Epoch uint64 `json:"epoch"`
	// CheckStart is when the job began the `fleet lease check` that preceded
	// this write (the writer's clock; every process of the suite runs on one
	// host, so it is the same clock as the broker's and the coordinators').
	CheckStart time.Time `json:"check_start"`
	At         time.Time `json:"at"` // when the ledger received the write
	Accepted   bool      `json:"accepted"`
	Reason     string    `json:"reason,omitempty"` // why a refused write was refused
}

// Ledger is the append-only side-effect store the checker workload writes
// to. It is fenced the way a real side-effect store would be: it refuses a
// write whose epoch is lower than one it has already accepted for the job,
// and records the refusal. A write at the highest epoch seen is accepted
// (the same lease holder may write again); the checker decides what a
// repeat means.
//
// Wire protocol (TCP, one line each way):
//
//	W <job-id> <epoch> <check-start-unix-nanos>
//	OK | REFUSED <reason> | ERR <reason>
type Ledger struct {
	ln net.Listener

	mu      sync.Mutex
	effects []Effect
	high    map[string]uint64 // highest accepted epoch per job
	conns   map[net.Conn]struct{}
	closed  bool

	wg sync.WaitGroup
}

// StartLedger listens on 127.0.0.1 on a free port and serves until Close.
func StartLedger() (*Ledger, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("ledger: listen: %w", err)
	}
	l := &Ledger{ln: ln, high: map[string]uint64{}, conns: map[net.Conn]struct{}{}}
	l.wg.Go(l.serve)
	return l, nil
}

// Addr is the host:port jobs write to.
func (l *Ledger) Addr() string { return l.ln.Addr().String() }

// Close stops serving and waits for every connection handler.
func (l *Ledger) Close() error {
	l.mu.Lock()
	l.closed = true
	for c := range l.conns {
		_ = c.Close()
	}
	l.mu.Unlock()
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

func (l *Ledger) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = c.Close()
			return
		}
		l.conns[c] = struct{}{}
		l.mu.Unlock()
		l.wg.Go(func() {
			defer func() {
				l.mu.Lock()
				delete(l.conns, c)
				l.mu.Unlock()
				_ = c.Close()
			}()
			l.handle(c)
		})
	}
}

func (l *Ledger) handle(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		reply := "OK"
		jobID, epoch, stamp, perr := parseWrite(strings.TrimSpace(line))
		if perr != nil {
			reply = "ERR " + perr.Error()
		} else if ok, why := l.Write(jobID, epoch, stamp); !ok {
			reply = "REFUSED " + why
		}
		_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(reply + "\n")); err != nil {
			return
		}
	}
}

func parseWrite(line string) (jobID string, epoch uint64, checkStart time.Time, err error) {
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "W" {
		return "", 0, time.Time{}, errors.New(`want "W <job> <epoch> <check-start-nanos>"`)
	}
	epoch, err = strconv.ParseUint(f[2], 10, 64)
	if err != nil || epoch == 0 {
		return "", 0, time.Time{}, fmt.Errorf("bad epoch %q", f[2])
	}
	ns, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil || ns <= 0 {
		return "", 0, time.Time{}, fmt.Errorf("bad check-start %q", f[3])
	}
	return f[1], epoch, time.Unix(0, ns), nil
}

// Write applies the fencing rule to one write and records it, accepted or
// refused. It is what a connection's "W" line does.
func (l *Ledger) Write(jobID string, epoch uint64, checkStart time.Time) (accepted bool, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := Effect{Job: jobID, Epoch: epoch, CheckStart: checkStart, At: time.Now(), Accepted: true}
	if high, ok := l.high[jobID]; ok && epoch < high {
		e.Accepted = false
		e.Reason = fmt.Sprintf("epoch %d is below epoch %d, already accepted for job %s", epoch, high, jobID)
	} else {
		l.high[jobID] = epoch
	}
	l.effects = append(l.effects, e)
	return e.Accepted, e.Reason
}

// Effects returns a copy of every write received so far, in arrival order.
func (l *Ledger) Effects() []Effect {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Effect(nil), l.effects...)
}
