package job

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/agentqueue/fleet/subjects"
)

// Spec is a job as submitted: the JSON published on fleet.ingest.<product>.
type Spec struct {
	Product        string            `json:"product"`
	Item           string            `json:"item,omitempty"` // tracker item reference
	Title          string            `json:"title,omitempty"`
	Requires       []string          `json:"requires,omitempty"` // "key=value" or bare "key" (=true)
	Priority       int               `json:"priority,omitempty"` // higher runs first
	Command        []string          `json:"command"`
	Env            map[string]string `json:"env,omitempty"`
	Payload        json.RawMessage   `json:"payload,omitempty"` // opaque; given to the command on stdin
	TimeoutSec     int               `json:"timeout_sec,omitempty"`
	MaxAttempts    int               `json:"max_attempts,omitempty"`
	IdempotencyKey string            `json:"idempotency_key,omitempty"`
}

// Limits and defaults of a spec.
const (
	MaxSpecBytes       = 256 << 10
	MaxPriority        = 1000
	DefaultMaxAttempts = 3
	MaxMaxAttempts     = 100
	DefaultTimeoutSec  = 3600
	MaxTimeoutSec      = 7 * 24 * 3600
	maxArgs            = 1024
	maxEnv             = 256
	maxTitle           = 512
	maxItem            = 256
	maxIdemKey         = 256
	// ReservedEnvPrefix names variables fleet sets itself.
	ReservedEnvPrefix = "AQ_FLEET_"
)

// DecodeSpec parses and validates a submission. Every refusal is an
// ErrInvalidSpec whose message a person can act on. The decoder is strict:
// unknown fields, trailing data, invalid UTF-8 and out-of-range numbers are
// refused rather than guessed at.
func DecodeSpec(data []byte) (Spec, error) {
	var s Spec
	if len(data) > MaxSpecBytes {
		return s, fmt.Errorf("%w: submission is %d bytes, the limit is %d", ErrInvalidSpec, len(data), MaxSpecBytes)
	}
	if !utf8.Valid(data) {
		return s, fmt.Errorf("%w: submission is not valid UTF-8", ErrInvalidSpec)
	}
	if err := decodeStrict(data, &s); err != nil {
		return s, fmt.Errorf("%w: %s", ErrInvalidSpec, describeJSONError(err))
	}
	if err := s.Normalize(); err != nil {
		return s, err
	}
	return s, nil
}

// DecodeSpecFor decodes a submission received on product's ingest subject:
// a spec without a product takes the subject's, and a spec naming another
// product is refused.
func DecodeSpecFor(data []byte, product string) (Spec, error) {
	var probe struct {
		Product *string `json:"product"`
	}
	if json.Unmarshal(data, &probe) == nil && probe.Product == nil && utf8.Valid(data) && len(data) <= MaxSpecBytes {
		var m map[string]json.RawMessage
		if json.Unmarshal(data, &m) == nil && m != nil {
			p, _ := json.Marshal(product)
			m["product"] = p
			if filled, err := json.Marshal(m); err == nil {
				data = filled
			}
		}
	}
	s, err := DecodeSpec(data)
	if err != nil {
		return s, err
	}
	if s.Product != product {
		return s, fmt.Errorf("%w: spec names product %q but was submitted on %q's subject", ErrInvalidSpec, s.Product, product)
	}
	return s, nil
}

// decodeStrict decodes exactly one JSON object, refusing unknown fields and
// trailing data.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("unexpected data after the JSON object")
	}
	return nil
}

func describeJSONError(err error) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn):
		return fmt.Sprintf("malformed JSON at byte %d: %v", syn.Offset, syn)
	case errors.As(err, &typ):
		if typ.Field != "" {
			return fmt.Sprintf("field %q must be %v, got JSON %s", typ.Field, typ.Type, typ.Value)
		}
		return fmt.Sprintf("expected a JSON object, got JSON %s", typ.Value)
	case errors.Is(err, io.EOF):
		return "empty submission"
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	default:
		return err.Error()
	}
}

// Normalize applies defaults and validates s in place.
func (s *Spec) Normalize() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, a...))
	}
	if err := subjects.CheckToken("product", s.Product); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidSpec, err)
	}
	if len(s.Command) == 0 || s.Command[0] == "" {
		return bad("command is empty: give the program and its arguments, e.g. [\"echo\", \"hello\"]")
	}
	if len(s.Command) > maxArgs {
		return bad("command has %d arguments, the limit is %d", len(s.Command), maxArgs)
	}
	for i, a := range s.Command {
		if strings.IndexByte(a, 0) >= 0 {
			return bad("command argument %d contains a NUL byte", i)
		}
	}
	req, err := ParseLabels(s.Requires)
	if err != nil {
		return bad("requires: %v", err)
	}
	s.Requires = req
	if s.Priority < -MaxPriority || s.Priority > MaxPriority {
		return bad("priority %d is out of range [-%d, %d]", s.Priority, MaxPriority, MaxPriority)
	}
	switch {
	case s.TimeoutSec == 0:
		s.TimeoutSec = DefaultTimeoutSec
	case s.TimeoutSec < 0 || s.TimeoutSec > MaxTimeoutSec:
		return bad("timeout_sec %d is out of range [1, %d]", s.TimeoutSec, MaxTimeoutSec)
	}
	switch {
	case s.MaxAttempts == 0:
		s.MaxAttempts = DefaultMaxAttempts
	case s.MaxAttempts < 0 || s.MaxAttempts > MaxMaxAttempts:
		return bad("max_attempts %d is out of range [1, %d]", s.MaxAttempts, MaxMaxAttempts)
	}
	if len(s.Env) > maxEnv {
		return bad("env has %d variables, the limit is %d", len(s.Env), maxEnv)
	}
	for k, v := range s.Env {
		if !validEnvName(k) {
			return bad("env name %q: use letters, digits and '_', not starting with a digit", k)
		}
		if strings.HasPrefix(k, ReservedEnvPrefix) {
			return bad("env name %q: the %s prefix is reserved for variables fleet sets", k, ReservedEnvPrefix)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return bad("env %s contains a NUL byte", k)
		}
	}
	if len(s.Title) > maxTitle {
		return bad("title is %d bytes, the limit is %d", len(s.Title), maxTitle)
	}
	if len(s.Item) > maxItem {
		return bad("item is %d bytes, the limit is %d", len(s.Item), maxItem)
	}
	if len(s.IdempotencyKey) > maxIdemKey {
		return bad("idempotency_key is %d bytes, the limit is %d", len(s.IdempotencyKey), maxIdemKey)
	}
	for _, r := range s.IdempotencyKey {
		if r < 0x20 || r == 0x7f {
			return bad("idempotency_key contains a control character")
		}
	}
	if len(s.Payload) > 0 && !json.Valid(s.Payload) {
		return bad("payload is not valid JSON")
	}
	return nil
}

func validEnvName(k string) bool {
	if k == "" || len(k) > 256 {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// PayloadBytes is what the command reads on stdin: a JSON string payload is
// given decoded, anything else as its JSON text.
func (s *Spec) PayloadBytes() []byte {
	if len(s.Payload) == 0 {
		return nil
	}
	var str string
	if json.Unmarshal(s.Payload, &str) == nil {
		return []byte(str)
	}
	return s.Payload
}

var idEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// IDForKey derives the job id of a submission with an idempotency key, so the
// same key always names the same job, past any duplicate window.
func IDForKey(product, key string) string {
	return hashID("k", product+"\x00"+key)
}

// IDForMessage derives the job id of a submission without an idempotency key
// from its place in FLEET_INGEST, so a redelivered submission is one job.
func IDForMessage(product string, streamSeq uint64, stampNanos int64) string {
	return hashID("m", product+"\x00"+strconv.FormatUint(streamSeq, 10)+"\x00"+strconv.FormatInt(stampNanos, 10))
}

func hashID(prefix, s string) string {
	sum := sha256.Sum256([]byte(s))
	return prefix + idEncoding.EncodeToString(sum[:15])
}
