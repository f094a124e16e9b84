package job

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestDecodeSpecValid(t *testing.T) {
	t.Parallel()
	s, err := DecodeSpec([]byte(`{"product":"acme","command":["echo","hi"],"requires":["os=linux","gpu"],"payload":"data"}`))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(s.Requires, []string{"gpu=true", "os=linux"}) {
		t.Fatalf("requires not canonical: %v", s.Requires)
	}
	if s.MaxAttempts != DefaultMaxAttempts || s.TimeoutSec != DefaultTimeoutSec {
		t.Fatalf("defaults not applied: %+v", s)
	}
	if string(s.PayloadBytes()) != "data" {
		t.Fatalf("payload: %q", s.PayloadBytes())
	}
}

func TestDecodeSpecRefusals(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, in, want string
	}{
		{"empty", ``, "empty submission"},
		{"not json", `hello`, "malformed JSON"},
		{"truncated", `{"product":"a"`, "truncated"},
		{"array", `[1]`, "expected a JSON object"},
		{"trailing", `{"product":"a","command":["x"]} {}`, "after the JSON object"},
		{"unknown field", `{"product":"a","command":["x"],"colour":1}`, "unknown field"},
		{"wrong type", `{"product":"a","command":"x"}`, `field "command"`},
		{"no product", `{"command":["x"]}`, "product is empty"},
		{"wildcard product", `{"product":"a.*","command":["x"]}`, "may only contain"},
		{"gt product", `{"product":">","command":["x"]}`, "may only contain"},
		{"no command", `{"product":"a"}`, "command is empty"},
		{"huge priority", `{"product":"a","command":["x"],"priority":1e12}`, "priority"},
		{"negative timeout", `{"product":"a","command":["x"],"timeout_sec":-1}`, "timeout_sec"},
		{"negative attempts", `{"product":"a","command":["x"],"max_attempts":-5}`, "max_attempts"},
		{"bad label", `{"product":"a","command":["x"],"requires":["os=li nux"]}`, "capability"},
		{"conflicting label", `{"product":"a","command":["x"],"requires":["os=a","os=b"]}`, "twice"},
		{"reserved env", `{"product":"a","command":["x"],"env":{"AQ_FLEET_EPOCH":"9"}}`, "reserved"},
		{"bad env name", `{"product":"a","command":["x"],"env":{"1A":"9"}}`, "env name"},
		{"invalid utf8", "{\"product\":\"a\xff\",\"command\":[\"x\"]}", "UTF-8"},
		{"oversize", `{"product":"a","command":["` + strings.Repeat("x", MaxSpecBytes) + `"]}`, "limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := DecodeSpec([]byte(tc.in))
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("err = %v, want ErrInvalidSpec", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestIDs(t *testing.T) {
	t.Parallel()
	a, b := IDForKey("p", "k"), IDForKey("p", "k")
	if a != b || a == IDForKey("q", "k") || a == IDForKey("p", "k2") {
		t.Fatal("IDForKey not a function of (product, key)")
	}
	if IDForMessage("p", 1, 5) == IDForMessage("p", 2, 5) {
		t.Fatal("IDForMessage collides")
	}
}

func TestLabels(t *testing.T) {
	t.Parallel()
	have, _ := ParseLabels([]string{"os=linux", "gpu", "arch=amd64"})
	need, _ := ParseLabels([]string{"gpu=true", "os=linux"})
	other, _ := ParseLabels([]string{"os=darwin"})
	if !have.Covers(need) || have.Covers(other) || !have.Covers(nil) || need.Covers(have) {
		t.Fatal("Covers wrong")
	}
	if p := PoolName(have); p != "arch-amd64_gpu-true_os-linux" {
		t.Fatalf("PoolName = %q", p)
	}
	var many []string
	for i := range 20 {
		many = append(many, "k"+strings.Repeat("x", i)+"=v")
	}
	l, _ := ParseLabels(many)
	if p := PoolName(l); !strings.HasPrefix(p, "caps-") || len(p) > 64 {
		t.Fatalf("long PoolName = %q", p)
	}
}

// seeds loads testdata/<dir>/* as fuzz seeds.
func seeds(f *testing.F, dir string) {
	files, _ := filepath.Glob(filepath.Join("testdata", dir, "*"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzDecodeSpec(f *testing.F) {
	seeds(f, "spec")
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := DecodeSpec(data)
		if err != nil {
			if !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("refusal is not ErrInvalidSpec: %v", err)
			}
			return
		}
		// An accepted spec is safe to route and to splice into subjects.
		if !strings.HasPrefix(IDForKey(s.Product, s.IdempotencyKey), "k") || len(s.Command) == 0 ||
			s.MaxAttempts < 1 || s.TimeoutSec < 1 {
			t.Fatalf("accepted an unusable spec: %+v", s)
		}
		if _, err := ParseLabels(s.Requires); err != nil {
			t.Fatalf("accepted labels that do not re-parse: %v", err)
		}
	})
}

func fuzzRequest[T any, P interface {
	*T
	Request
}](f *testing.F) {
	seeds(f, "control")
	f.Fuzz(func(t *testing.T, data []byte) {
		if _, err := DecodeRequest[T, P](data); err != nil && !errors.Is(err, ErrBadRequest) {
			t.Fatalf("refusal is not ErrBadRequest: %v", err)
		}
	})
}

func FuzzDecodeClaim(f *testing.F)    { fuzzRequest[ClaimRequest](f) }
func FuzzDecodeLease(f *testing.F)    { fuzzRequest[LeaseRequest](f) }
func FuzzDecodeComplete(f *testing.F) { fuzzRequest[CompleteRequest](f) }
func FuzzDecodeCancel(f *testing.F)   { fuzzRequest[CancelRequest](f) }
func FuzzDecodeFactory(f *testing.F)  { fuzzRequest[FactoryInfo](f) }

func TestControlDecoders(t *testing.T) {
	t.Parallel()
	if _, err := DecodeRequest[ClaimRequest]([]byte(`{"job_id":"a.>","dispatch_gen":1,"factory":"f","delivery":1}`)); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("wildcard job id: %v", err)
	}
	if _, err := DecodeRequest[LeaseRequest]([]byte(`{"job_id":"a","epoch":-1}`)); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("negative epoch: %v", err)
	}
	if _, err := DecodeRequest[FactoryInfo]([]byte(`{"id":"f","pool":"p","slots":0}`)); !errors.Is(err, ErrBadRequest) {
		t.Fatalf("zero slots: %v", err)
	}
	c, err := DecodeRequest[CompleteRequest]([]byte(`{"job_id":"a","epoch":2,"factory":"f","outcome":{"exit_code":1}}`))
	if err != nil || c.Outcome.ExitCode != 1 {
		t.Fatalf("complete: %v %+v", err, c)
	}
}
