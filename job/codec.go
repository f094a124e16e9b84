package job

// The hand-written JSON codec of Record and Event. Records are encoded and
// decoded on every write the coordinator makes, and reflective encoding/json
// took a large share of its CPU. The wire format is encoding/json's, exactly:
// appendRecord and appendEvent append the bytes json.Marshal gives, and
// decodeRecord accepts what json.Unmarshal accepts and yields the same value.
// Deliberate differences, neither visible for a record Encode wrote:
//   - object keys are matched exactly, where encoding/json also matches them
//     case-insensitively ("ID" for "id"): decodeRecord skips such a key as
//     unknown. Records are written only by Encode, with these exact keys.
//   - a null in a repeated "command" or "requires" array (see readStrings).
//
// codec_test.go and its fuzzers hold the codec to this.

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// recordEncodable reports whether appendRecord writes r as json.Marshal
// does. json.Marshal refuses a time it cannot write as RFC 3339 and a payload
// that is not JSON; Encode leaves those records to it, to fail as it always
// has.
func recordEncodable(r *Record) bool {
	return timesEncodable(r.LeaseUntil, r.RetryAt, r.Created, r.Updated, r.Started, r.Finished) &&
		(len(r.Spec.Payload) == 0 || jsonValid(r.Spec.Payload))
}

// eventEncodable is recordEncodable for an event.
func eventEncodable(e *Event) bool {
	return timesEncodable(e.At, e.Created, e.RetryAt)
}

// timesEncodable reports whether time.Time.MarshalJSON accepts every one of
// ts: RFC 3339 has room for years 0-9999 and zone offsets under 24 hours.
func timesEncodable(ts ...time.Time) bool {
	for _, t := range ts {
		_, offset := t.Zone()
		if y := t.Year(); y < 0 || y > 9999 || offset <= -24*3600 || offset >= 24*3600 {
			return false
		}
	}
	return true
}

// recordSizeHint is a capacity that holds r's JSON, so that Encode allocates
// once: room for the keys, numbers and times, and for the strings unless
// they need escaping.
func recordSizeHint(r *Record) int {
	n := 512 + len(r.ID) + len(r.State) + len(r.Pool) + len(r.Owner) + len(r.LastError) + len(r.OutputTail) + len(r.From)
	s := &r.Spec
	n += len(s.Product) + len(s.Item) + len(s.Title) + len(s.Payload) + len(s.IdempotencyKey)
	for _, v := range s.Requires {
		n += len(v) + len(`"",`)
	}
	for _, v := range s.Command {
		n += len(v) + len(`"",`)
	}
	for k, v := range s.Env {
		n += len(k) + len(v) + len(`"":"",`)
	}
	return n
}

// eventSizeHint is recordSizeHint for an event.
func eventSizeHint(e *Event) int {
	n := 256 + len(e.JobID) + len(e.Product) + len(e.From) + len(e.To) + len(e.Pool) + len(e.Owner) + len(e.Reason)
	for _, v := range e.Requires {
		n += len(v) + len(`"",`)
	}
	return n
}

// appendRecord appends r's JSON: the bytes of json.Marshal(r), for every r
// recordEncodable accepts. Keys come in struct field order and follow the
// fields' omitempty and omitzero options.
func appendRecord(b []byte, r *Record) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, r.ID)
	b = append(b, `,"spec":`...)
	b = appendSpec(b, &r.Spec)
	b = append(b, `,"state":`...)
	b = appendString(b, string(r.State))
	b = appendTrue(b, `,"unroutable":true`, r.Unroutable)
	b = appendNonEmpty(b, `,"pool":`, r.Pool)
	b = append(b, `,"dispatch_gen":`...)
	b = strconv.AppendUint(b, r.DispatchGen, 10)
	b = append(b, `,"epoch":`...)
	b = strconv.AppendUint(b, r.Epoch, 10)
	b = appendNonEmpty(b, `,"owner":`, r.Owner)
	b = appendNonZeroTime(b, `,"lease_until":`, r.LeaseUntil)
	b = appendNonZeroUint(b, `,"stream_seq":`, r.StreamSeq)
	b = appendNonZeroUint(b, `,"delivery":`, r.Delivery)
	b = append(b, `,"attempt":`...)
	b = strconv.AppendInt(b, int64(r.Attempt), 10)
	b = appendNonZeroTime(b, `,"retry_at":`, r.RetryAt)
	if r.ExitCode != nil {
		b = append(b, `,"exit_code":`...)
		b = strconv.AppendInt(b, int64(*r.ExitCode), 10)
	}
	b = appendNonEmpty(b, `,"last_error":`, r.LastError)
	b = appendNonEmpty(b, `,"output_tail":`, r.OutputTail)
	b = append(b, `,"created":`...)
	b = appendTime(b, r.Created)
	b = append(b, `,"updated":`...)
	b = appendTime(b, r.Updated)
	b = appendNonZeroTime(b, `,"started":`, r.Started)
	b = appendNonZeroTime(b, `,"finished":`, r.Finished)
	b = appendTrue(b, `,"moved":true`, r.Moved)
	b = appendNonEmpty(b, `,"from":`, string(r.From))
	return append(b, '}')
}

func appendSpec(b []byte, s *Spec) []byte {
	b = append(b, `{"product":`...)
	b = appendString(b, s.Product)
	b = appendNonEmpty(b, `,"item":`, s.Item)
	b = appendNonEmpty(b, `,"title":`, s.Title)
	if len(s.Requires) > 0 {
		b = append(b, `,"requires":`...)
		b = appendStrings(b, s.Requires)
	}
	b = appendNonZeroInt(b, `,"priority":`, s.Priority)
	b = append(b, `,"command":`...)
	b = appendStrings(b, s.Command)
	if len(s.Env) > 0 {
		b = append(b, `,"env":`...)
		b = appendEnv(b, s.Env)
	}
	if len(s.Payload) > 0 {
		b = append(b, `,"payload":`...)
		b = appendCompact(b, s.Payload)
	}
	b = appendNonZeroInt(b, `,"timeout_sec":`, s.TimeoutSec)
	b = appendNonZeroInt(b, `,"max_attempts":`, s.MaxAttempts)
	b = appendNonEmpty(b, `,"idempotency_key":`, s.IdempotencyKey)
	return append(b, '}')
}

// appendEvent appends e's JSON: the bytes of json.Marshal(e), for every e
// eventEncodable accepts.
func appendEvent(b []byte, e *Event) []byte {
	b = append(b, `{"job_id":`...)
	b = appendString(b, e.JobID)
	b = append(b, `,"product":`...)
	b = appendString(b, e.Product)
	b = append(b, `,"from":`...)
	b = appendString(b, string(e.From))
	b = append(b, `,"to":`...)
	b = appendString(b, string(e.To))
	b = appendNonZeroUint(b, `,"epoch":`, e.Epoch)
	b = appendNonZeroInt(b, `,"attempt":`, e.Attempt)
	b = appendNonEmpty(b, `,"pool":`, e.Pool)
	b = appendNonEmpty(b, `,"owner":`, e.Owner)
	b = appendNonEmpty(b, `,"reason":`, e.Reason)
	b = append(b, `,"at":`...)
	b = appendTime(b, e.At)
	b = append(b, `,"rev":`...)
	b = strconv.AppendUint(b, e.Rev, 10)
	b = appendNonZeroInt(b, `,"priority":`, e.Priority)
	b = appendNonZeroTime(b, `,"created":`, e.Created)
	if len(e.Requires) > 0 {
		b = append(b, `,"requires":`...)
		b = appendStrings(b, e.Requires)
	}
	b = appendNonZeroTime(b, `,"retry_at":`, e.RetryAt)
	b = appendTrue(b, `,"unroutable":true`, e.Unroutable)
	return append(b, '}')
}

// The appendNon… helpers write an omitempty or omitzero field: the key
// (with its leading comma) and value, or nothing for the zero value.

func appendTrue(b []byte, member string, v bool) []byte {
	if !v {
		return b
	}
	return append(b, member...)
}

func appendNonEmpty(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

func appendNonZeroInt(b []byte, key string, n int) []byte {
	if n == 0 {
		return b
	}
	return strconv.AppendInt(append(b, key...), int64(n), 10)
}

func appendNonZeroUint(b []byte, key string, n uint64) []byte {
	if n == 0 {
		return b
	}
	return strconv.AppendUint(append(b, key...), n, 10)
}

// appendNonZeroTime follows omitzero, which uses time.Time.IsZero: a zero
// instant in any location is omitted.
func appendNonZeroTime(b []byte, key string, t time.Time) []byte {
	if t.IsZero() {
		return b
	}
	return appendTime(append(b, key...), t)
}

// appendTime writes t as time.Time.MarshalJSON does, for the times it accepts
// (see timesEncodable): AppendFormat with RFC3339Nano is the same formatter.
func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendStrings writes a []string; nil is null, as encoding/json writes it
// (the fields that omit an empty list check before calling).
func appendStrings(b []byte, list []string) []byte {
	if list == nil {
		return append(b, "null"...)
	}
	b = append(b, '[')
	for i, s := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s)
	}
	return append(b, ']')
}

// appendEnv writes a map with its keys sorted bytewise, as encoding/json does.
func appendEnv(b []byte, env map[string]string) []byte {
	var room [16]string // the keys of a typical env, without an allocation
	keys := room[:0]
	for k := range env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i == 0 {
			b = append(b, '{')
		} else {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, env[k])
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// plainASCII marks the ASCII bytes a JSON string holds as themselves under
// encoding/json's default, HTML-safe escaping.
var plainASCII = func() (plain [utf8.RuneSelf]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		plain[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return plain
}()

// appendString writes s as a JSON string escaped as encoding/json does by
// default: control characters as \n, \r, \t, \b, \f or \u00XX; <, > and &
// as \u003c, \u003e and \u0026 (HTML-safe); U+2028 and U+2029, which
// JavaScript does not allow in strings, as \u2028 and \u2029; and each byte
// of invalid UTF-8 as \ufffd.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0 // s[start:i] is pending: bytes written as themselves
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plainASCII[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			b = appendEscapedASCII(b, c)
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

func appendEscapedASCII(b []byte, c byte) []byte {
	switch c {
	case '"', '\\':
		return append(b, '\\', c)
	case '\b':
		return append(b, '\\', 'b')
	case '\f':
		return append(b, '\\', 'f')
	case '\n':
		return append(b, '\\', 'n')
	case '\r':
		return append(b, '\\', 'r')
	case '\t':
		return append(b, '\\', 't')
	}
	return append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
}

// appendCompact writes a valid JSON value as json.Marshal writes a
// json.RawMessage: without the whitespace between tokens, and with <, >, &,
// U+2028 and U+2029 in its strings escaped as appendString escapes them.
// Invalid UTF-8 is left as it is. (json.Compact alone does not escape.)
func appendCompact(b, v []byte) []byte {
	inString := false
	start := 0 // v[start:i] is pending: bytes written as they are
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case inString && c == '\\':
			i++ // the escaped byte is ASCII and needs nothing: skip it with the backslash
		case c == '"':
			inString = !inString
		case !inString && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			b = append(b, v[start:i]...)
			start = i + 1
		case c == '<' || c == '>' || c == '&':
			b = append(b, v[start:i]...)
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			start = i + 1
		case c == 0xe2 && i+2 < len(v) && v[i+1] == 0x80 && v[i+2]&^1 == 0xa8: // U+2028, U+2029
			b = append(b, v[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[v[i+2]&0xf])
			i += 2
			start = i + 1
		}
	}
	return append(b, v[start:]...)
}

// jsonValid reports whether v is exactly one JSON value, as json.Valid does
// (FuzzDecodeRecord checks they agree), with the scanner of decodeRecord,
// which is faster.
func jsonValid(v []byte) bool {
	d := decoder{data: v}
	if d.skipValue() != nil {
		return false
	}
	d.skipSpace()
	return d.pos == len(d.data)
}

// decodeRecord decodes data into r as json.Unmarshal(data, r) does, r being
// a zero Record as DecodeRecord gives it, except that keys are matched
// exactly (see the top of this file). Like encoding/json, it skips unknown
// keys; leaves a string, number, bool, time or the spec as it is for a
// null, and sets a slice, map or pointer to nil; adds a repeated "env" key's
// variables to the first's; and refuses the wrong JSON type for a field, a
// number out of its field's range, malformed JSON and trailing data. Every
// string is copied: data may be reused once it returns.
func decodeRecord(data []byte, r *Record) error {
	d := decoder{data: data}
	c, err := d.peek()
	if err != nil {
		return err
	}
	switch c {
	case '{':
		err = d.object(func(key []byte) error { return d.recordMember(r, key) })
	case 'n':
		err = d.literal("null") // leaves r as it is
	default:
		err = d.typeError("record", "an object", c)
	}
	if err != nil {
		return err
	}
	d.skipSpace()
	if d.pos < len(d.data) {
		return d.errorf("unexpected %q after the record", d.data[d.pos])
	}
	return nil
}

func (d *decoder) recordMember(r *Record, key []byte) error {
	switch string(key) {
	case "id":
		return d.readString("id", &r.ID)
	case "spec":
		return d.readSpec(&r.Spec)
	case "state":
		return d.readState("state", &r.State)
	case "unroutable":
		return d.readBool("unroutable", &r.Unroutable)
	case "pool":
		return d.readString("pool", &r.Pool)
	case "dispatch_gen":
		return d.readUint("dispatch_gen", &r.DispatchGen)
	case "epoch":
		return d.readUint("epoch", &r.Epoch)
	case "owner":
		return d.readString("owner", &r.Owner)
	case "lease_until":
		return d.readTime("lease_until", &r.LeaseUntil)
	case "stream_seq":
		return d.readUint("stream_seq", &r.StreamSeq)
	case "delivery":
		return d.readUint("delivery", &r.Delivery)
	case "attempt":
		return d.readInt("attempt", &r.Attempt)
	case "retry_at":
		return d.readTime("retry_at", &r.RetryAt)
	case "exit_code":
		return d.readIntPointer("exit_code", &r.ExitCode)
	case "last_error":
		return d.readString("last_error", &r.LastError)
	case "output_tail":
		return d.readString("output_tail", &r.OutputTail)
	case "created":
		return d.readTime("created", &r.Created)
	case "updated":
		return d.readTime("updated", &r.Updated)
	case "started":
		return d.readTime("started", &r.Started)
	case "finished":
		return d.readTime("finished", &r.Finished)
	case "moved":
		return d.readBool("moved", &r.Moved)
	case "from":
		return d.readState("from", &r.From)
	}
	return d.skipValue()
}

func (d *decoder) specMember(s *Spec, key []byte) error {
	switch string(key) {
	case "product":
		return d.readString("spec.product", &s.Product)
	case "item":
		return d.readString("spec.item", &s.Item)
	case "title":
		return d.readString("spec.title", &s.Title)
	case "requires":
		return d.readStrings("spec.requires", &s.Requires)
	case "priority":
		return d.readInt("spec.priority", &s.Priority)
	case "command":
		return d.readStrings("spec.command", &s.Command)
	case "env":
		return d.readEnv("spec.env", &s.Env)
	case "payload":
		// Any value, kept as its bytes: json.RawMessage copies them.
		d.skipSpace()
		start := d.pos
		if err := d.skipValue(); err != nil {
			return err
		}
		s.Payload = bytes.Clone(d.data[start:d.pos])
		return nil
	case "timeout_sec":
		return d.readInt("spec.timeout_sec", &s.TimeoutSec)
	case "max_attempts":
		return d.readInt("spec.max_attempts", &s.MaxAttempts)
	case "idempotency_key":
		return d.readString("spec.idempotency_key", &s.IdempotencyKey)
	}
	return d.skipValue()
}

// decoder reads JSON (RFC 8259) by recursive descent, as strictly as
// encoding/json's scanner: the same grammar, control characters refused in
// strings, invalid UTF-8 accepted (and replaced when decoded), the same
// nesting limit. Each method skips the whitespace before what it reads.
// Errors name what was wrong and the byte offset where it was found.
type decoder struct {
	data    []byte
	pos     int    // next byte to read
	depth   int    // objects and arrays open at pos
	scratch []byte // the last escaped string decoded, reused for the next
}

// maxDepth is encoding/json's limit on nesting; it also bounds recursion.
const maxDepth = 10000

func (d *decoder) errorf(format string, args ...any) error {
	return fmt.Errorf(format+" at byte %d", append(args, d.pos)...)
}

// typeError reports that field holds c's kind of value where it needs want;
// or, if no JSON value starts with c, the syntax error.
func (d *decoder) typeError(field, want string, c byte) error {
	found := valueKind(c)
	if found == "" {
		return d.notValue(c)
	}
	return d.errorf("%s: expected %s, found %s", field, want, found)
}

func (d *decoder) notValue(c byte) error {
	return d.errorf("invalid character %q looking for the beginning of a value", c)
}

// valueKind names the kind of JSON value that starts with c, or "" if none does.
func valueKind(c byte) string {
	switch {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == 'n':
		return "null"
	case c == '-' || '0' <= c && c <= '9':
		return "a number"
	}
	return ""
}

func (d *decoder) skipSpace() {
	for d.pos < len(d.data) {
		switch d.data[d.pos] {
		case ' ', '\t', '\n', '\r':
			d.pos++
		default:
			return
		}
	}
}

// peek returns the next byte after whitespace, leaving it unread.
func (d *decoder) peek() (byte, error) {
	d.skipSpace()
	if d.pos == len(d.data) {
		return 0, d.errorf("unexpected end of input")
	}
	return d.data[d.pos], nil
}

func (d *decoder) literal(word string) error {
	if !bytes.HasPrefix(d.data[d.pos:], []byte(word)) {
		return d.errorf("invalid literal, expected %s", word)
	}
	d.pos += len(word)
	return nil
}

// open reads the '{' or '[' at pos.
func (d *decoder) open() error {
	if d.depth == maxDepth {
		return d.errorf("JSON nested deeper than %d", maxDepth)
	}
	d.depth++
	d.pos++
	return nil
}

// more reports whether another member or element follows in the object or
// array being read, reading the ',' before every one but the first, or the
// closing byte at the end.
func (d *decoder) more(closing byte, first bool) (bool, error) {
	c, err := d.peek()
	switch {
	case err != nil:
		return false, err
	case c == closing:
		d.pos++
		d.depth--
		return false, nil
	case first:
		return true, nil // the caller reads the member, or fails on what is there
	case c != ',':
		return false, d.errorf("expected ',' or %q, found %q", closing, c)
	}
	d.pos++
	return true, nil
}

// object reads the object at pos, calling member with each key and pos at
// its value, which member reads. The key is valid until the next string is
// read.
func (d *decoder) object(member func(key []byte) error) error {
	if err := d.open(); err != nil {
		return err
	}
	for first := true; ; first = false {
		if more, err := d.more('}', first); !more {
			return err
		}
		key, err := d.key()
		if err != nil {
			return err
		}
		if err := member(key); err != nil {
			return err
		}
	}
}

// array reads the array at pos, calling element with pos at each element,
// which element reads.
func (d *decoder) array(element func() error) error {
	if err := d.open(); err != nil {
		return err
	}
	for first := true; ; first = false {
		if more, err := d.more(']', first); !more {
			return err
		}
		if err := element(); err != nil {
			return err
		}
	}
}

func (d *decoder) key() ([]byte, error) {
	c, err := d.peek()
	if err != nil {
		return nil, err
	}
	if c != '"' {
		return nil, d.errorf("expected a string key, found %q", c)
	}
	key, err := d.stringBytes()
	if err != nil {
		return nil, err
	}
	if c, err := d.peek(); err != nil {
		return nil, err
	} else if c != ':' {
		return nil, d.errorf("expected ':' after the key, found %q", c)
	}
	d.pos++
	return key, nil
}

// skipValue reads and discards the value at pos, checking its syntax.
func (d *decoder) skipValue() error {
	c, err := d.peek()
	if err != nil {
		return err
	}
	switch {
	case c == '{':
		return d.object(func([]byte) error { return d.skipValue() })
	case c == '[':
		return d.array(d.skipValue)
	case c == '"':
		_, _, err := d.scanString()
		return err
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		_, err := d.number()
		return err
	}
	return d.notValue(c)
}

// scanString reads the string whose opening quote is at pos and returns its
// raw content, between the quotes. plain reports that the content is its own
// value: no escapes, valid UTF-8.
func (d *decoder) scanString() (raw []byte, plain bool, err error) {
	start := d.pos + 1
	plain = true
	for i := start; i < len(d.data); {
		switch c := d.data[i]; {
		case ' ' <= c && c < utf8.RuneSelf && c != '"' && c != '\\':
			i++ // the common case first
		case c == '"':
			d.pos = i + 1
			return d.data[start:i], plain, nil
		case c == '\\':
			n := escapeLen(d.data[i:])
			if n == 0 {
				d.pos = i
				return nil, false, d.errorf("invalid or truncated escape in string")
			}
			plain = false
			i += n
		case c < ' ':
			d.pos = i
			return nil, false, d.errorf("control character %#02x in string", c)
		default:
			r, size := utf8.DecodeRune(d.data[i:])
			plain = plain && !(r == utf8.RuneError && size == 1)
			i += size
		}
	}
	d.pos = len(d.data)
	return nil, false, d.errorf("unexpected end of input in string")
}

// escapeLen returns the length of the escape sequence at the start of s, or
// 0 if it is not one JSON allows.
func escapeLen(s []byte) int {
	if len(s) < 2 {
		return 0
	}
	switch s[1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		return 2
	case 'u':
		if len(s) >= 6 && hexValue(s[2]) >= 0 && hexValue(s[3]) >= 0 && hexValue(s[4]) >= 0 && hexValue(s[5]) >= 0 {
			return 6
		}
	}
	return 0
}

func hexValue(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

// stringBytes reads the string at pos and returns its value, valid until the
// next string is read: it is in data or in the scratch buffer.
func (d *decoder) stringBytes() ([]byte, error) {
	raw, plain, err := d.scanString()
	if err != nil || plain {
		return raw, err
	}
	d.scratch = unescape(d.scratch[:0], raw)
	return d.scratch, nil
}

// unescape appends the value of a string whose raw content scanString has
// checked, decoded as encoding/json decodes it: each byte of invalid UTF-8,
// and each surrogate not in a \u pair, becomes U+FFFD.
func unescape(b, raw []byte) []byte {
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == '\\' && raw[i+1] == 'u':
			r := utf16Unit(raw[i:])
			i += 6
			if utf16.IsSurrogate(r) {
				// Only the next \u escape can complete the pair; if it does
				// not, it is decoded on its own.
				next := rune(-1)
				if len(raw)-i >= 6 && raw[i] == '\\' && raw[i+1] == 'u' {
					next = utf16Unit(raw[i:])
				}
				if r = utf16.DecodeRune(r, next); r != utf8.RuneError {
					i += 6
				}
			}
			b = utf8.AppendRune(b, r)
		case c == '\\':
			b = append(b, unescapeByte(raw[i+1]))
			i += 2
		case c < utf8.RuneSelf:
			b = append(b, c)
			i++
		default:
			r, size := utf8.DecodeRune(raw[i:])
			b = utf8.AppendRune(b, r) // RuneError for an invalid byte
			i += size
		}
	}
	return b
}

// utf16Unit returns the code unit of the checked \uXXXX escape at the start of s.
func utf16Unit(s []byte) rune {
	return hexValue(s[2])<<12 | hexValue(s[3])<<8 | hexValue(s[4])<<4 | hexValue(s[5])
}

// unescapeByte returns the byte a checked one-letter escape stands for.
func unescapeByte(c byte) byte {
	switch c {
	case 'b':
		return '\b'
	case 'f':
		return '\f'
	case 'n':
		return '\n'
	case 'r':
		return '\r'
	case 't':
		return '\t'
	}
	return c // '"', '\\' and '/' stand for themselves
}

// number reads the number at pos and returns its text.
func (d *decoder) number() ([]byte, error) {
	start := d.pos
	i := start
	if i < len(d.data) && d.data[i] == '-' {
		i++
	}
	switch {
	case i < len(d.data) && d.data[i] == '0':
		i++
	case i < len(d.data) && '1' <= d.data[i] && d.data[i] <= '9':
		i = d.digits(i)
	default:
		d.pos = i
		return nil, d.errorf("invalid number, expected a digit")
	}
	if i < len(d.data) && d.data[i] == '.' {
		i++
		j := d.digits(i)
		if j == i {
			d.pos = i
			return nil, d.errorf("invalid number, expected a digit after '.'")
		}
		i = j
	}
	if i < len(d.data) && (d.data[i] == 'e' || d.data[i] == 'E') {
		i++
		if i < len(d.data) && (d.data[i] == '+' || d.data[i] == '-') {
			i++
		}
		j := d.digits(i)
		if j == i {
			d.pos = i
			return nil, d.errorf("invalid number, expected a digit in the exponent")
		}
		i = j
	}
	d.pos = i
	return d.data[start:i], nil
}

// digits returns the index after the run of decimal digits starting at i.
func (d *decoder) digits(i int) int {
	for i < len(d.data) && '0' <= d.data[i] && d.data[i] <= '9' {
		i++
	}
	return i
}

// The read… methods decode a value into a field, named in errors. For a
// null they do what encoding/json does to the field's type.

// value starts reading the value of field: it reads a null and reports it,
// and fails unless the value starts with one of the bytes of starts.
func (d *decoder) value(field, want, starts string) (null bool, err error) {
	c, err := d.peek()
	switch {
	case err != nil:
		return false, err
	case c == 'n':
		return true, d.literal("null")
	case strings.IndexByte(starts, c) < 0:
		return false, d.typeError(field, want, c)
	}
	return false, nil
}

func (d *decoder) readSpec(s *Spec) error {
	if null, err := d.value("spec", "an object", "{"); null || err != nil {
		return err // a null leaves the spec as it is
	}
	return d.object(func(key []byte) error { return d.specMember(s, key) })
}

func (d *decoder) readString(field string, dst *string) error {
	if null, err := d.value(field, "a string", `"`); null || err != nil {
		return err // a null leaves dst as it is
	}
	s, err := d.stringBytes()
	*dst = string(s)
	return err
}

// readState is readString sparing the allocation of a known state's name.
func (d *decoder) readState(field string, dst *State) error {
	if null, err := d.value(field, "a string", `"`); null || err != nil {
		return err // a null leaves dst as it is
	}
	s, err := d.stringBytes()
	if err != nil {
		return err
	}
	for _, known := range States {
		if string(known) == string(s) {
			*dst = known
			return nil
		}
	}
	*dst = State(s)
	return nil
}

func (d *decoder) readBool(field string, dst *bool) error {
	if null, err := d.value(field, "a boolean", "tf"); null || err != nil {
		return err // a null leaves dst as it is
	}
	if d.data[d.pos] == 't' {
		*dst = true
		return d.literal("true")
	}
	*dst = false
	return d.literal("false")
}

func (d *decoder) readInt(field string, dst *int) error {
	return readSigned(d, field, "int", strconv.IntSize, dst)
}

func (d *decoder) readInt64(field string, dst *int64) error {
	return readSigned(d, field, "int64", 64, dst)
}

// readSigned reads an integer of bits bits (Go type typ, for errors).
func readSigned[T int | int64](d *decoder, field, typ string, bits int, dst *T) error {
	if null, err := d.value(field, "an integer", "-0123456789"); null || err != nil {
		return err // a null leaves dst as it is
	}
	num, err := d.number()
	if err != nil {
		return err
	}
	n, err := strconv.ParseInt(string(num), 10, bits)
	if err != nil {
		return d.numberError(field, num, typ)
	}
	*dst = T(n)
	return nil
}

func (d *decoder) readUint(field string, dst *uint64) error {
	if null, err := d.value(field, "an unsigned integer", "-0123456789"); null || err != nil {
		return err // a null leaves dst as it is
	}
	num, err := d.number()
	if err != nil {
		return err
	}
	n, err := strconv.ParseUint(string(num), 10, 64)
	if err != nil {
		return d.numberError(field, num, "uint64")
	}
	*dst = n
	return nil
}

// numberError reports a number that is not an integer in the range of typ:
// encoding/json refuses a fraction or exponent even when the value is whole.
func (d *decoder) numberError(field string, num []byte, typ string) error {
	d.pos -= len(num)
	return d.errorf("%s: %s is not a valid %s", field, num, typ)
}

func (d *decoder) readIntPointer(field string, dst **int) error {
	if c, err := d.peek(); err == nil && c == 'n' {
		*dst = nil
		return d.literal("null")
	}
	n := new(int)
	err := d.readInt(field, n)
	*dst = n
	return err
}

// readTime hands the raw JSON value to time.Time.UnmarshalJSON, as
// encoding/json does: it leaves dst as it is for a null, and refuses anything
// but an RFC 3339 string without escapes.
func (d *decoder) readTime(field string, dst *time.Time) error {
	d.skipSpace()
	start := d.pos
	if err := d.skipValue(); err != nil {
		return err
	}
	if err := dst.UnmarshalJSON(d.data[start:d.pos]); err != nil {
		return fmt.Errorf("%s: %w at byte %d", field, err, start)
	}
	return nil
}

// readStrings reads an array of strings into a new slice, null elements
// as "" (encoding/json would decode into the slice already there, but only
// a repeated key could tell them apart).
func (d *decoder) readStrings(field string, dst *[]string) error {
	if null, err := d.value(field, "an array of strings", "["); null || err != nil {
		if null {
			*dst = nil
		}
		return err
	}
	var room [8]string // a typical list, without an allocation
	list := room[:0]
	err := d.array(func() error {
		var s string
		err := d.readString(field, &s)
		list = append(list, s)
		return err
	})
	if err != nil {
		return err
	}
	*dst = append(make([]string, 0, len(list)), list...) // [] is an empty slice, not nil
	return nil
}

// readEnv reads an object of strings into the map, making it if it is nil:
// like encoding/json, a repeated key adds to the map the first one made.
func (d *decoder) readEnv(field string, dst *map[string]string) error {
	if null, err := d.value(field, "an object of strings", "{"); null || err != nil {
		if null {
			*dst = nil
		}
		return err
	}
	if *dst == nil {
		*dst = make(map[string]string)
	}
	env := *dst
	return d.object(func(key []byte) error {
		name := string(key)
		var value string // a null value is stored as ""
		err := d.readString(field, &value)
		env[name] = value
		return err
	})
}
