package job

// The fast path of the control API's hot messages: the claim, lease and
// complete requests every job's run makes, and the claim and lease
// replies. encoding/json's reflective decoding of them (with a
// json.Decoder per request, for its strictness) took 1.1 s of a
// 20,000-job drain's 16.7 s of profiled CPU; BenchmarkDecodeControl puts
// one run's four messages at 24 µs that way, 7 µs this way.
//
// decodeFast reads a message with the record codec's decoder, but only
// the plainest form of it: one JSON object whose keys are each a known key
// of the type, spelled exactly, none repeated (nor in a claim reply's
// spec), followed by nothing but whitespace. Anything else — an unknown,
// misspelled or differently-cased key, a repeat, a null where the type
// wants an object, malformed JSON, a number out of range — makes it fail,
// and the caller decodes the message with encoding/json as before, which
// then decides whether it is accepted and words the error. So the fast
// path never accepts what encoding/json would refuse, and what it accepts
// it decodes to the same value: FuzzControlCodec holds it to that.

import "errors"

// errNotFast: the message is not in the form decodeFast reads.
var errNotFast = errors.New("job: not in the fast path's form")

// fastMessage is a control message decodeFast reads: its keys, and how to
// read the value of the i-th.
type fastMessage interface {
	keys() []string
	read(d *decoder, i int) error
}

func decodeFast(data []byte, m fastMessage) error {
	d := decoder{data: data}
	if err := d.fastObject(m); err != nil {
		return err
	}
	d.skipSpace()
	if d.pos != len(d.data) {
		return errNotFast
	}
	return nil
}

// fastObject reads an object into m: each key one of m's, read once. (A
// null, which encoding/json treats by the field's type, is not the fast
// path's.)
func (d *decoder) fastObject(m fastMessage) error {
	if c, err := d.peek(); err != nil || c != '{' {
		return errNotFast
	}
	keys := m.keys()
	var seen uint32
	return d.object(func(key []byte) error {
		for i, k := range keys {
			if k == string(key) {
				if seen&(1<<i) != 0 {
					return errNotFast
				}
				seen |= 1 << i
				return m.read(d, i)
			}
		}
		return errNotFast
	})
}

var claimRequestKeys = []string{"job_id", "dispatch_gen", "factory", "stream_seq", "delivery"}

func (*ClaimRequest) keys() []string { return claimRequestKeys }

func (c *ClaimRequest) read(d *decoder, i int) error {
	switch i {
	case 0:
		return d.readString("job_id", &c.JobID)
	case 1:
		return d.readUint("dispatch_gen", &c.DispatchGen)
	case 2:
		return d.readString("factory", &c.Factory)
	case 3:
		return d.readUint("stream_seq", &c.StreamSeq)
	}
	return d.readUint("delivery", &c.Delivery)
}

var leaseRequestKeys = []string{"job_id", "epoch", "factory", "reason"}

func (*LeaseRequest) keys() []string { return leaseRequestKeys }

func (l *LeaseRequest) read(d *decoder, i int) error {
	switch i {
	case 0:
		return d.readString("job_id", &l.JobID)
	case 1:
		return d.readUint("epoch", &l.Epoch)
	case 2:
		return d.readString("factory", &l.Factory)
	}
	return d.readString("reason", &l.Reason)
}

var completeRequestKeys = []string{"job_id", "epoch", "factory", "outcome"}

func (*CompleteRequest) keys() []string { return completeRequestKeys }

func (c *CompleteRequest) read(d *decoder, i int) error {
	switch i {
	case 0:
		return d.readString("job_id", &c.JobID)
	case 1:
		return d.readUint("epoch", &c.Epoch)
	case 2:
		return d.readString("factory", &c.Factory)
	}
	return d.fastObject(&c.Outcome)
}

var outcomeKeys = []string{"exit_code", "error", "output_tail"}

func (*Outcome) keys() []string { return outcomeKeys }

func (o *Outcome) read(d *decoder, i int) error {
	switch i {
	case 0:
		return d.readInt("exit_code", &o.ExitCode)
	case 1:
		return d.readString("error", &o.Error)
	}
	return d.readString("output_tail", &o.OutputTail)
}

var claimReplyKeys = []string{"verdict", "reason", "retry_ms", "epoch", "attempt", "lease_until", "spec", "error"}

func (*ClaimReply) keys() []string { return claimReplyKeys }

func (c *ClaimReply) read(d *decoder, i int) error {
	switch i {
	case 0:
		v := string(c.Verdict)
		err := d.readString("verdict", &v)
		c.Verdict = Verdict(v)
		return err
	case 1:
		return d.readString("reason", &c.Reason)
	case 2:
		return d.readInt64("retry_ms", &c.RetryMs)
	case 3:
		return d.readUint("epoch", &c.Epoch)
	case 4:
		return d.readInt("attempt", &c.Attempt)
	case 5:
		return d.readTime("lease_until", &c.LeaseUntil)
	case 6:
		if c.Spec != nil { // encoding/json would decode into the spec there
			return errNotFast
		}
		c.Spec = new(Spec)
		return d.fastObject((*fastSpec)(c.Spec))
	}
	return d.readCtlError(&c.Err)
}

var leaseReplyKeys = []string{"state", "lease_until", "error"}

func (*LeaseReply) keys() []string { return leaseReplyKeys }

func (l *LeaseReply) read(d *decoder, i int) error {
	switch i {
	case 0:
		return d.readState("state", &l.State)
	case 1:
		return d.readTime("lease_until", &l.LeaseUntil)
	}
	return d.readCtlError(&l.Err)
}

var ctlErrorKeys = []string{"code", "message"}

func (*CtlError) keys() []string { return ctlErrorKeys }

func (e *CtlError) read(d *decoder, i int) error {
	if i == 0 {
		return d.readString("code", &e.Code)
	}
	return d.readString("message", &e.Message)
}

// fastSpec is a claim reply's spec, read by the record codec's spec
// members.
type fastSpec Spec

var fastSpecKeys = []string{"product", "item", "title", "requires", "priority", "command", "env", "payload",
	"timeout_sec", "max_attempts", "idempotency_key"}

func (*fastSpec) keys() []string { return fastSpecKeys }

func (s *fastSpec) read(d *decoder, i int) error {
	return d.specMember((*Spec)(s), []byte(fastSpecKeys[i]))
}

// readCtlError reads an error object into a new CtlError, or a null as nil.
func (d *decoder) readCtlError(dst **CtlError) error {
	if c, err := d.peek(); err == nil && c == 'n' {
		*dst = nil
		return d.literal("null")
	}
	if *dst != nil { // encoding/json would decode into the one there
		return errNotFast
	}
	*dst = new(CtlError)
	return d.fastObject(*dst)
}
