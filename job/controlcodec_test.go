package job

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// controlSamples are control messages as the fleet sends them (json.Marshal
// of each type), which decodeFast must take.
func controlSamples() []any {
	return []any{
		&ClaimRequest{JobID: "m1a2b3", DispatchGen: 3, Factory: "factory-1", StreamSeq: 18446744073709551615, Delivery: 2},
		&ClaimRequest{},
		&LeaseRequest{JobID: "kx", Epoch: 7, Factory: "f", Reason: "shutting down <now> & \u2028"},
		&LeaseRequest{JobID: "kx", Epoch: 7},
		&CompleteRequest{JobID: "kx", Epoch: 9, Factory: "f", Outcome: Outcome{ExitCode: -3, Error: "timed out", OutputTail: "line\n\"quoted\"\t\\"}},
		&CompleteRequest{JobID: "kx", Epoch: 1, Factory: "f"},
		&ClaimReply{Verdict: VerdictRun, Epoch: 4, Attempt: 2, LeaseUntil: time.Date(2026, 12, 3, 15, 4, 5, 123456789, time.UTC),
			Spec: &Spec{Product: "acme", Item: "T-1", Title: "build <it>", Requires: []string{"os=linux", "gpu"}, Priority: -2,
				Command: []string{"sh", "-c", "echo \"hi\""}, Env: map[string]string{"A": "1", "É": ""},
				Payload: json.RawMessage(`{"a":[1,2.5e3,"x"],"b":null}`), TimeoutSec: 60, MaxAttempts: 3, IdempotencyKey: "idem"}},
		&ClaimReply{Verdict: VerdictLater, Reason: "held by f2", RetryMs: 1500},
		&ClaimReply{Verdict: VerdictDrop, Reason: "job is succeeded"},
		&ClaimReply{Err: &CtlError{Code: "stale_epoch", Message: "epoch 3 < 4"}},
		&LeaseReply{State: Running, LeaseUntil: time.Date(2026, 12, 3, 15, 4, 5, 0, time.FixedZone("", 3600))},
		&LeaseReply{Err: &CtlError{Code: "not_found", Message: "no job kx"}},
		&LeaseReply{},
	}
}

// newLike returns a pointer to a zero value of v's type.
func newLike(v any) any { return reflect.New(reflect.TypeOf(v).Elem()).Interface() }

func TestFastPathTakesWhatTheFleetSends(t *testing.T) {
	t.Parallel()
	for _, want := range controlSamples() {
		data, err := json.Marshal(want)
		if err != nil {
			t.Fatal(err)
		}
		got := newLike(want)
		if err := decodeFast(data, got.(fastMessage)); err != nil {
			t.Errorf("decodeFast(%s): %v", data, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("decodeFast(%s)\n got %+v\nwant %+v", data, got, want)
		}
	}
}

func TestFastPathLeavesTheRestToEncodingJSON(t *testing.T) {
	t.Parallel()
	for _, in := range []string{
		`{"JOB_ID":"a","epoch":1}`,          // a key encoding/json matches case-insensitively
		`{"job_id":"a","epoch":1,"x":1}`,    // unknown
		`{"job_id":"a","job_id":"b"}`,       // repeated
		`{"job_id":"a"} {}`,                 // trailing
		`{"job_id":"a","epoch":1.0}`,        // not an integer
		`{"job_id":"a","outcome":null}`,     // a null object
		`null`, `[]`, ``, `{"job_id":"a",}`, // not an object, malformed
	} {
		for _, v := range []fastMessage{&LeaseRequest{}, &CompleteRequest{}} {
			if err := decodeFast([]byte(in), v); err == nil {
				t.Errorf("decodeFast(%s) into %T: accepted", in, v)
			}
		}
	}
	// Through DecodeRequest, encoding/json decides and words the error.
	if _, err := DecodeRequest[LeaseRequest]([]byte(`{"job_id":"a","epoch":1,"x":1}`)); err == nil || err.Error() != `job: bad request: json: unknown field "x"` {
		t.Errorf("unknown field: %v", err)
	}
	if r, err := DecodeRequest[LeaseRequest]([]byte(`{"Job_ID":"a","EPOCH":2}`)); err != nil || r.JobID != "a" || r.Epoch != 2 {
		t.Errorf("case-insensitive keys: %+v %v", r, err)
	}
	var reply ClaimReply
	if err := DecodeReply([]byte(`{"verdict":"run","spec":{"command":["x"]},"extra":1}`), &reply); err != nil ||
		reply.Verdict != VerdictRun || reply.Spec == nil || reply.Spec.Command[0] != "x" {
		t.Errorf("reply with an unknown key: %+v %v", reply, err)
	}
}

// What decodeFast accepts, encoding/json accepts too and decodes to the
// same value (strictly, for requests, as DecodeRequest does; leniently, for
// replies, as DecodeReply does).
func FuzzControlCodec(f *testing.F) {
	for _, v := range controlSamples() {
		data, _ := json.Marshal(v)
		f.Add(data)
	}
	f.Add([]byte(`{"job_id":"a","outcome":{"exit_code":1,"exit_code":2}}`))
	f.Add([]byte(`{"spec":{"command":["a"]},"spec":{"command":[null]}}`))
	// encoding/json decodes a repeated array into the slice the first made,
	// where a null element keeps the string before it.
	f.Add([]byte(`{"spec":{"requires":["a"],"requires":[null]}}`))
	f.Add([]byte(`{"error":{"code":"x"},"error":{"message":"y"}}`))
	f.Add([]byte(`{"verdict":null,"retry_ms":-9223372036854775808,"attempt":-0,"lease_until":null}`))
	f.Add([]byte(`{"spec":{"env":{"A":"1","A":null},"payload":  [1, {"x" : "\u00e9"}] }}`))
	f.Add([]byte(` {"job_id":"\ud83d\ude00","epoch":18446744073709551616} `))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, zero := range []any{&ClaimRequest{}, &LeaseRequest{}, &CompleteRequest{}, &ClaimReply{}, &LeaseReply{}} {
			got := newLike(zero)
			if decodeFast(data, got.(fastMessage)) != nil {
				continue
			}
			want := newLike(zero)
			var err error
			switch zero.(type) {
			case *ClaimReply, *LeaseReply:
				err = json.Unmarshal(data, want)
			default:
				err = decodeStrict(data, want)
			}
			if err != nil {
				t.Fatalf("decodeFast took %q as %T; encoding/json refuses it: %v", data, zero, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decodeFast(%q) into %T\n got %+v\nwant %+v", data, zero, got, want)
			}
		}
	})
}

// BenchmarkDecodeControl decodes the messages of one run — claim, claim
// reply, complete, lease reply — by the fast path (DecodeRequest,
// DecodeReply) and by encoding/json as before.
func BenchmarkDecodeControl(b *testing.B) {
	samples := controlSamples()
	for _, v := range []any{samples[0], samples[6], samples[4], samples[10]} {
		data, _ := json.Marshal(v)
		name := reflect.TypeOf(v).Elem().Name()
		b.Run(name+"/fast", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var err error
				switch v.(type) {
				case *ClaimRequest:
					_, err = DecodeRequest[ClaimRequest](data)
				case *CompleteRequest:
					_, err = DecodeRequest[CompleteRequest](data)
				default:
					err = DecodeReply(data, newLike(v))
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name+"/encoding-json", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var err error
				switch v.(type) {
				case *ClaimRequest, *CompleteRequest:
					err = decodeStrict(data, newLike(v))
				default:
					err = json.Unmarshal(data, newLike(v))
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
