package job

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The codec must be indistinguishable from encoding/json: these tests and
// fuzzers compare it with json.Marshal and json.Unmarshal, byte for byte and
// value for value.

func fullRecord() Record {
	exit := -3
	return Record{
		ID: "kabc", State: Failed, Unroutable: true, Pool: "gpu-pool", DispatchGen: 7, Epoch: 18446744073709551615,
		Owner: "factory-1", LeaseUntil: time.Date(2026, 2, 3, 4, 5, 6, 700000000, time.UTC),
		StreamSeq: 12, Delivery: 2, Attempt: -9223372036854775808,
		RetryAt:  time.Date(2026, 2, 3, 4, 5, 6, 0, time.FixedZone("", 5*3600+30*60)),
		ExitCode: &exit, LastError: "exit code 3", OutputTail: "line 1\nline 2\t<done>\r\n",
		Created: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), Updated: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		Started:  time.Date(2026, 2, 3, 4, 5, 6, 123000, time.FixedZone("WEST", -(2*3600+15*60+7))),
		Finished: time.Date(2026, 2, 3, 4, 5, 7, 0, time.UTC),
		Moved:    true, From: Running,
		Spec: Spec{
			Product: "widgets", Item: "TRACK-1", Title: "Rebuild & <verify> the index",
			Requires: []string{"arch=amd64", "gpu=true"}, Priority: -5,
			Command:    []string{"sh", "-c", `echo "hi" \ there`},
			Env:        map[string]string{"B": "2", "A": "1", "Z_9": "", "a": "lower", "É": "\u2028"},
			Payload:    json.RawMessage(" {\n \"a\" : [ 1 , 2.5e3 , \"x<y> & \\\" \u2029\" ] ,\t\"b\" : { \"c\" : null } } "),
			TimeoutSec: 60, MaxAttempts: 3, IdempotencyKey: "idem-1",
		},
	}
}

// benchRecord is a realistic record: a running job.
func benchRecord() Record {
	spec := Spec{
		Product: "widgets", Title: "Rebuild the search index for tenant 4711",
		Requires:   []string{"arch=amd64", "gpu=true", "os=linux"},
		Command:    []string{"/usr/local/bin/reindex", "--tenant", "4711"},
		Env:        map[string]string{"LOG_LEVEL": "info", "REGION": "eu-west-1"},
		TimeoutSec: 3600, MaxAttempts: 3,
	}
	now := time.Date(2026, 3, 14, 9, 26, 53, 589793238, time.UTC)
	r := NewRecord("kq3vzk7m2xw4c5dyb6tnr8pj", spec, now.Add(-time.Minute))
	r, err := r.Dispatch("arch-amd64_gpu-true_os-linux", now.Add(-30*time.Second))
	if err != nil {
		panic(err)
	}
	r, _ = r.Claim(ClaimRequest{JobID: r.ID, DispatchGen: r.DispatchGen, Factory: "factory-eu-7", StreamSeq: 81723, Delivery: 1}, now, 30*time.Second)
	return r
}

// everyEscape holds a character of each class appendString treats apart.
const everyEscape = "\x00\x01\x07\b\t\n\v\f\r\x1b\x1f \"\\/<>&'\x7f" + "é€😀\ufffd\u2028\u2029" +
	"\xff\xfe" + "\xe2\x80" + "\xed\xa0\x80" + "\xf0\x9f\x98" + "end"

func TestAppendRecordMatchesJSON(t *testing.T) {
	t.Parallel()
	withSpec := func(f func(*Spec)) Record {
		r := Record{ID: "j", State: Queued}
		f(&r.Spec)
		return r
	}
	cases := map[string]Record{
		"zero":    {},
		"full":    fullRecord(),
		"running": benchRecord(),
		"escapes": {ID: everyEscape, LastError: strings.Repeat(everyEscape, 3), Spec: Spec{Command: []string{everyEscape}, Env: map[string]string{everyEscape: everyEscape}}},
		"exit 0":  {ExitCode: new(int)},
		"from":    {From: "odd\u2028state"},
		"local":   {Created: time.Date(2026, 6, 1, 12, 0, 0, 0, time.Local), Updated: time.Date(2026, 6, 1, 12, 0, 0, 5, time.FixedZone("X", -23*3600-59*60-59))},
		"year 0":  {Created: time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), Updated: time.Date(1, 1, 1, 0, 30, 0, 0, time.FixedZone("", 3600))},
		"zeroat":  {LeaseUntil: time.Time{}.In(time.FixedZone("", 3600)), Started: time.Time{}.In(time.FixedZone("", 25*3600))},
		"empty": withSpec(func(s *Spec) {
			s.Command, s.Requires, s.Env, s.Payload = []string{}, []string{}, map[string]string{}, json.RawMessage{}
		}),
		"nils":     withSpec(func(s *Spec) { s.Command = []string{"", ""} }),
		"p null":   withSpec(func(s *Spec) { s.Payload = json.RawMessage("null") }),
		"p string": withSpec(func(s *Spec) { s.Payload = json.RawMessage(" \"a \\u2028 \u2028<\\\\\" ") }),
		"p utf8":   withSpec(func(s *Spec) { s.Payload = json.RawMessage("[\"\xff\xe2\x80\", \"\xe2\x80\xa9\" ]") }),
		"p number": withSpec(func(s *Spec) { s.Payload = json.RawMessage("\r\n-0.5E+10\t") }),
		"p nested": withSpec(func(s *Spec) { s.Payload = json.RawMessage(`[{"a":[[],{}]},[{"b":[1,{"c":"}]"}]}]]`) }),
	}
	for name, r := range cases {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("%s: json.Marshal: %v", name, err)
		}
		if got := appendRecord(nil, &r); !bytes.Equal(got, want) {
			t.Errorf("%s: appendRecord\n got %s\nwant %s", name, got, want)
		}
		if got := r.Encode(); !bytes.Equal(got, want) {
			t.Errorf("%s: Encode\n got %s\nwant %s", name, got, want)
		}
		checkDecodeMatches(t, name, want)
	}
}

func TestAppendEventMatchesJSON(t *testing.T) {
	t.Parallel()
	next := fullRecord()
	full, _ := next.Transition(41)
	full.Owner, full.Pool = "o<", "p&"
	cases := map[string]Event{
		"zero":     {},
		"full":     full,
		"creation": EventFor(Record{}, benchRecord(), 1),
		"escapes":  {JobID: everyEscape, Reason: everyEscape, Requires: Labels{everyEscape}},
		"empty":    {Requires: Labels{}, At: time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", -60))},
	}
	for name, e := range cases {
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("%s: json.Marshal: %v", name, err)
		}
		if got := appendEvent(nil, &e); !bytes.Equal(got, want) {
			t.Errorf("%s: appendEvent\n got %s\nwant %s", name, got, want)
		}
		if got := e.Encode(); !bytes.Equal(got, want) {
			t.Errorf("%s: Encode\n got %s\nwant %s", name, got, want)
		}
	}
}

// TestEncodeRefusesAsJSONDoes: Encode panics, and Event.Encode returns nil,
// exactly where json.Marshal fails.
func TestEncodeRefusesAsJSONDoes(t *testing.T) {
	t.Parallel()
	times := map[string]time.Time{
		"year -1":      time.Date(-1, 12, 31, 0, 0, 0, 0, time.UTC),
		"year 10000":   time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		"year 0 local": time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC).In(time.FixedZone("", -1)),
		"offset +24h":  time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600)),
		"offset -24h":  time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", -24*3600)),
		"offset 100h":  time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 100*3600)),
		"offset +23h":  time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", 24*3600-1)),
		"offset -23h":  time.Date(2026, 1, 1, 0, 0, 0, 0, time.FixedZone("", -24*3600+1)),
		"year 9999":    time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		"year 10000-1": time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC).In(time.FixedZone("", -1)),
	}
	for name, tm := range times {
		for field := range 6 {
			r := Record{ID: "j"}
			*[]*time.Time{&r.LeaseUntil, &r.RetryAt, &r.Created, &r.Updated, &r.Started, &r.Finished}[field] = tm
			checkEncodeRefusal(t, fmt.Sprintf("%s in time %d", name, field), r)
		}
		e := Event{At: tm}
		want, _ := json.Marshal(e)
		if got := e.Encode(); !bytes.Equal(got, want) {
			t.Errorf("event %s: Encode gives %s, json.Marshal %s", name, got, want)
		}
	}
	for _, p := range []string{"{", "[1,]", "01", "\"\x01\"", "1 2", " ", "nul", "{\"a\":1}}", strings.Repeat("[", 10001) + strings.Repeat("]", 10001)} {
		checkEncodeRefusal(t, fmt.Sprintf("payload %q", p), Record{ID: "j", Spec: Spec{Payload: json.RawMessage(p)}})
	}
}

func checkEncodeRefusal(t *testing.T, name string, r Record) {
	t.Helper()
	want, jerr := json.Marshal(r)
	var got []byte
	panicked := func() (msg any) {
		defer func() { msg = recover() }()
		got = r.Encode()
		return nil
	}()
	switch {
	case jerr != nil && panicked == nil:
		t.Errorf("%s: Encode gave %s, json.Marshal failed: %v", name, got, jerr)
	case jerr != nil && panicked != fmt.Sprintf("job: encode record %s: %v", r.ID, jerr):
		t.Errorf("%s: Encode panicked with %v, json.Marshal failed with %v", name, panicked, jerr)
	case jerr == nil && panicked != nil:
		t.Errorf("%s: Encode panicked (%v), json.Marshal gave %s", name, panicked, want)
	case jerr == nil && !bytes.Equal(got, want):
		t.Errorf("%s: Encode\n got %s\nwant %s", name, got, want)
	}
}

// checkDecodeMatches decodes data with decodeRecord and json.Unmarshal and
// fails unless both fail or both give the same record.
func checkDecodeMatches(t *testing.T, name string, data []byte) {
	t.Helper()
	var got, want Record
	err := decodeRecord(data, &got)
	jerr := json.Unmarshal(data, &want)
	switch {
	case err != nil && jerr == nil:
		t.Errorf("%s: decodeRecord(%s) failed: %v; json.Unmarshal gives %+v", name, data, err, want)
	case err == nil && jerr != nil:
		t.Errorf("%s: decodeRecord(%s) gives %+v; json.Unmarshal fails: %v", name, data, got, jerr)
	case err == nil && !reflect.DeepEqual(got, want):
		t.Errorf("%s: decodeRecord(%s)\n got %#v\nwant %#v", name, data, got, want)
	}
}

// decodeInputs are records that json.Unmarshal accepts, by what they test.
var decodeInputs = map[string]string{
	"empty object": `{}`,
	"top null":     " null ",
	"whitespace":   " \t\r\n{ \"id\" :\n\"a\" , \"spec\"\t:{ \"command\" : [ \"x\" , null ] , \"env\" : { \"K\" : \"v\" } } , \"attempt\" : -0 }\n",
	"reordered":    `{"finished":"2026-01-01T00:00:00Z","spec":{"idempotency_key":"k","product":"p"},"from":"queued","id":"x","exit_code":0}`,
	"unknown": `{"u1":"s","u2":-1.5e-7,"u3":true,"u4":false,"u5":null,"u6":{"a":[1,{"b":{}},[]],"c":"\u0000"},"u7":[[],[{}],"x",0],` +
		`"spec":{"u8":{"command":["nope"]},"product":"p","u9":[null]},"id":"i"}`,
	"nulls": `{"id":null,"spec":null,"state":null,"unroutable":null,"pool":null,"dispatch_gen":null,"epoch":null,"owner":null,` +
		`"lease_until":null,"stream_seq":null,"delivery":null,"attempt":null,"retry_at":null,"exit_code":null,"last_error":null,` +
		`"output_tail":null,"created":null,"updated":null,"started":null,"finished":null,"moved":null,"from":null}`,
	"spec nulls": `{"spec":{"product":null,"item":null,"title":null,"requires":null,"priority":null,"command":null,"env":null,` +
		`"payload":null,"timeout_sec":null,"max_attempts":null,"idempotency_key":null}}`,
	"empty lists":  `{"spec":{"requires":[],"command":[],"env":{}}}`,
	"escapes":      `{"id":"\"\\\/\b\f\n\r\t\u0041\u00e9\u20AC\ud83d\ude00\u2028<>&\u003c","pool":"plain é"}`,
	"surrogates":   `{"id":"\ud83d","pool":"\ude00x","owner":"\ud83d\u0041","last_error":"\ud83dx\ud83d\ud83d\ude00","output_tail":"\udbff\udfff\ud800\\","from":"a\ud800"}`,
	"bad utf8":     "{\"id\":\"\xff\",\"pool\":\"a\xe2\x80\",\"owner\":\"\xed\xa0\x80\xc0\xaf\",\"last_error\":\"\xf4\x90\x80\x80\"}",
	"bad utf8 key": "{\"\xffid\":\"x\",\"i\xff\":\"y\"}",
	"escaped keys": `{"\u0069d":"x","spec":{"comm\u0061nd":["a"],"\u0065nv":{"\u004b":"\u0056"}}}`,
	"times": `{"created":"2026-01-02T03:04:05Z","updated":"2026-01-02T03:04:05.123456789+05:30","lease_until":"2026-01-02T03:04:05.1-00:00",` +
		`"retry_at":"0000-01-01T00:00:00+23:59","started":"9999-12-31T23:59:59.999999999Z","finished":"2026-01-02T03:04:05.000Z"}`,
	"repeated keys": `{"id":"a","id":"b","pool":"p","pool":null,"exit_code":1,"exit_code":2,"created":"2026-01-02T03:04:05Z","created":null,` +
		`"spec":{"env":{"A":"1","B":"2"},"payload":{"x":1}},"spec":{"env":{"A":"3","C":null},"payload":[ 2 ],"command":["a"]},"spec":{"command":["b","c"]}}`,
	"repeated null": `{"exit_code":1,"exit_code":null,"spec":{"env":{"A":"1"},"env":null,"requires":["x"],"requires":null}}`,
	"limits":        `{"dispatch_gen":18446744073709551615,"epoch":0,"attempt":-9223372036854775808,"delivery":9007199254740993,"spec":{"priority":9223372036854775807}}`,
	"full":          string(fullRecord().Encode()),
	"full spaced":   strings.NewReplacer(",", " ,\n ", ":", "\t: ", "{", "{ ", "}", " }").Replace(string(fullRecord().Encode())),
	"deep":          `{"x":` + strings.Repeat("[", 9999) + strings.Repeat("]", 9999) + `}`,
}

func TestDecodeRecordMatchesJSON(t *testing.T) {
	t.Parallel()
	for name, in := range decodeInputs {
		checkDecodeMatches(t, name, []byte(in))
	}
}

// TestDecodeRecordFieldTypes tries every field with values of every JSON
// type: decodeRecord must fail where json.Unmarshal does and agree with it
// elsewhere.
func TestDecodeRecordFieldTypes(t *testing.T) {
	t.Parallel()
	values := []string{
		`null`, `""`, `"x"`, `"queued"`, `"\u0041"`, `0`, `-0`, `1`, `-1`, `1.5`, `1.0`, `1e2`, `0e0`,
		`18446744073709551615`, `18446744073709551616`, `9223372036854775807`, `9223372036854775808`,
		`-9223372036854775808`, `-9223372036854775809`, `99999999999999999999999999999999999999`,
		`true`, `false`, `{}`, `{"A":"b"}`, `{"A":null}`, `{"A":1}`, `{"A":{}}`, `[]`, `["a",null]`, `[1]`, `[[]]`, `[{}]`,
		`"2026-01-02T03:04:05Z"`, `"2026-01-02T03:04:05.123456789+05:30"`, `"2026-01-02T03:04:05\u005a"`,
		`"2026-01-02 03:04:05Z"`, `"2026-01-02T03:04:05+24:00"`, `"10000-01-01T00:00:00Z"`, `"2026-01-02T03:04:05Z "`,
	}
	for _, field := range jsonNames(reflect.TypeFor[Record]()) {
		for _, v := range values {
			checkDecodeMatches(t, field, []byte(`{"`+field+`":`+v+`}`))
		}
	}
	for _, field := range jsonNames(reflect.TypeFor[Spec]()) {
		for _, v := range values {
			checkDecodeMatches(t, field, []byte(`{"spec":{"`+field+`":`+v+`}}`))
			checkDecodeMatches(t, field, []byte(`{"spec":{"env":{"K":`+v+`}}}`))
			checkDecodeMatches(t, field, []byte(`{"spec":{"command":[`+v+`]}}`))
		}
	}
}

// malformedInputs are records that json.Unmarshal refuses.
var malformedInputs = []string{
	``, ` `, `{`, `}`, `[]`, `"x"`, `1`, `true`, `nul`, `{} x`, `{}{}`, `{},`, `{}]`, `null null`, "{}\x00",
	`{"id":"a",}`, `{,}`, `{"id" "a"}`, `{"id":}`, `{"id"}`, `{"id":"a" "pool":"b"}`, `{"id":"a";"pool":"b"}`, `{id:"a"}`, `{'id':"a"}`,
	`{"id":tru}`, `{"id":nul}`, `{"moved":True}`, `{"x":01}`, `{"x":-}`, `{"x":-a}`, `{"x":1.}`, `{"x":1.e5}`, `{"x":1e}`, `{"x":1e+}`, `{"x":.5}`,
	`{"x":+1}`, `{"x":NaN}`, `{"x":0x10}`, `{"x":[1,]}`, `{"x":[,1]}`, `{"x":[1 2]}`, `{"x":{"a"}}`, `{"x":{"a":1,}}`, `{"x":{1:2}}`,
	`{"x":"\x"}`, `{"x":"\u12g4"}`, `{"x":"\u123"}`, `{"x":"\U0041"}`, `{"x":"\'"}`, "{\"x\":\"a\tb\"}", "{\"x\":\"a\x00b\"}", "{\"x\":\"\x1f\"}",
	`{"x":"abc`, `{"x":"abc\"}`, `{"x":'a'}`, "{\"id\":\"a\"}\x1b", "\ufeff{}", "{\"id\":\"a\"\xa0}",
	`{"dispatch_gen":-1}`, `{"dispatch_gen":-0}`, `{"epoch":18446744073709551616}`, `{"attempt":9223372036854775808}`,
	`{"spec":{"priority":-9223372036854775809}}`, `{"exit_code":1e0}`, `{"exit_code":"1"}`, `{"stream_seq":1.0}`,
	`{"spec":{"command":"sh"}}`, `{"spec":{"command":[1]}}`, `{"spec":{"requires":{}}}`, `{"spec":{"env":[]}}`, `{"spec":{"env":{"A":1}}}`,
	`{"spec":[]}`, `{"spec":"x"}`, `{"id":1}`, `{"state":true}`, `{"unroutable":"true"}`, `{"unroutable":1}`,
	`{"created":"2026-01-02T03:04:05\u005a"}`, `{"created":1}`, `{"created":{}}`, `{"created":"yesterday"}`, `{"created":"2026-13-01T00:00:00Z"}`,
	`{"x":` + strings.Repeat("[", 10000) + strings.Repeat("]", 10000) + `}`,
	`{"spec":{"payload":` + strings.Repeat(`{"a":`, 9999) + `1` + strings.Repeat("}", 9999) + `}}`,
}

func TestDecodeRecordRefusesMalformed(t *testing.T) {
	t.Parallel()
	inputs := slices.Clone(malformedInputs)
	full := fullRecord().Encode()
	for i := range full {
		inputs = append(inputs, string(full[:i]))
	}
	for _, in := range inputs {
		var r Record
		err := decodeRecord([]byte(in), &r)
		if err == nil {
			t.Errorf("decodeRecord(%q) succeeded: %+v", in, r)
		}
		if json.Unmarshal([]byte(in), new(Record)) == nil {
			t.Errorf("json.Unmarshal(%q) succeeded: the test is wrong", in)
		}
	}
}

func TestDecodeRecordErrorsSayWhere(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`{"id":"a","attempt":1.5}`:          "attempt: 1.5 is not a valid int at byte 20",
		`{"spec":{"command":["a",2]}}`:      "spec.command: expected a string, found a number at byte 24",
		`{"id":"a" x`:                       "expected ',' or '}', found 'x' at byte 10",
		`{"id":"a\q"}`:                      "invalid or truncated escape in string at byte 8",
		`{"id":"a"`:                         "unexpected end of input at byte 9",
		`{"created":"2026-01-02T03:04:05"}`: "created: parsing time",
		`{} {}`:                             "unexpected '{' after the record at byte 3",
	} {
		_, err := DecodeRecord([]byte(in))
		if err == nil || !strings.HasPrefix(err.Error(), "job: decode record: ") || !strings.Contains(err.Error(), want) {
			t.Errorf("DecodeRecord(%s): %v, want an error with %q", in, err, want)
		}
	}
}

// TestDecodeRecordExactKeys: unlike encoding/json, decodeRecord does not
// match keys case-insensitively; records are written in lower case only.
func TestDecodeRecordExactKeys(t *testing.T) {
	t.Parallel()
	var r Record
	if err := decodeRecord([]byte(`{"ID":"x","Spec":{"product":"p"},"attempt":1,"ATTEMPT":2,"ſtate":"queued"}`), &r); err != nil {
		t.Fatal(err)
	}
	if r.ID != "" || r.Spec.Product != "" || r.Attempt != 1 || r.State != "" {
		t.Fatalf("keys matched inexactly: %+v", r)
	}
}

func TestDecodeRecordCopiesStrings(t *testing.T) {
	t.Parallel()
	data := fullRecord().Encode()
	var r Record
	if err := decodeRecord(data, &r); err != nil {
		t.Fatal(err)
	}
	want, _ := json.Marshal(r)
	for i := range data {
		data[i] = 'x'
	}
	if got, _ := json.Marshal(r); !bytes.Equal(got, want) {
		t.Fatalf("the record changed with its input:\n got %s\nwant %s", got, want)
	}
}

func TestJSONValidMatches(t *testing.T) {
	t.Parallel()
	for _, in := range []string{"", " ", "1", " 1 ", "-", "01", "1.5e+3", "\"\\ud800\"", "[", "[]", "{}", "{\"a\":[true,false,null]}", "nul", "1 1", "\"\xff\"", "\"\x7f\""} {
		if got, want := jsonValid([]byte(in)), json.Valid([]byte(in)); got != want {
			t.Errorf("jsonValid(%q) = %v, json.Valid %v", in, got, want)
		}
	}
}

// jsonNames lists the JSON names of a struct's fields.
func jsonNames(t reflect.Type) []string {
	var names []string
	for f := range t.Fields() {
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		names = append(names, name)
	}
	return names
}

// fuzzTime makes a time in years 1-9999 (in any zone) from fuzz input: n
// picks the instant, zone the offset (under 24 hours) or UTC.
func fuzzTime(n int64, zone int32) time.Time {
	lo := time.Date(1, 1, 2, 0, 0, 0, 0, time.UTC).Unix()
	hi := time.Date(9999, 12, 30, 0, 0, 0, 0, time.UTC).Unix()
	u := uint64(n)
	t := time.Unix(lo+int64(u%uint64(hi-lo)), int64(u%1e9))
	switch {
	case zone == 0:
		return t.UTC()
	case zone == 1:
		return t.Local()
	}
	return t.In(time.FixedZone("Z", int(zone%(24*3600))))
}

// split makes a list from fuzz input: nil for "", else the parts between
// commas.
func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

var fuzzPayloads = []string{
	"", `{"a": [1, 2.5e3, "x<y> & \u2028"], "b": {"c": null}}`, ` "str" `, "[ ]", "null", "-0.1e-5", "[\"\xff\"]",
}

func FuzzRecordCodec(f *testing.F) {
	f.Add("j1", "p", "title <&>", "sh,-c,echo hi", "os=linux,gpu", "A=1;B=2", "", uint8(1), 3, int64(1), uint64(2), uint64(3),
		int64(1767225600000000000), int64(-1), int64(5), int32(0), uint16(0xffff))
	f.Add(everyEscape, "", "", "", "", everyEscape+"="+everyEscape, "{\"a\" :\n[1]}", uint8(4), -1, int64(-1), uint64(0), uint64(18446744073709551615),
		int64(0), int64(1<<62), int64(-1<<63), int32(19800), uint16(0x5555))
	f.Fuzz(func(t *testing.T, id, product, title, command, requires, env, payload string, pick uint8, attempt int, exit int64,
		gen, epoch uint64, t1, t2, t3 int64, zone int32, flags uint16) {
		bit := func(i int) bool { return flags&(1<<i) != 0 }
		r := Record{
			ID: id, State: State(title), Unroutable: bit(0), Pool: product, DispatchGen: gen, Epoch: epoch, Owner: command,
			StreamSeq: epoch ^ gen, Delivery: uint64(attempt), Attempt: attempt, LastError: requires, OutputTail: env,
			Created: fuzzTime(t1, zone), Updated: fuzzTime(t2, zone+1), Moved: bit(1), From: State(id),
			Spec: Spec{
				Product: product, Item: title, Title: title, Requires: split(requires), Priority: int(exit),
				Command: split(command), TimeoutSec: attempt, MaxAttempts: int(exit >> 32), IdempotencyKey: payload,
			},
		}
		if bit(2) {
			r.LeaseUntil = fuzzTime(t3, zone)
		}
		if bit(3) {
			r.RetryAt = fuzzTime(t1^t3, zone+2)
		}
		if bit(4) {
			r.Started = fuzzTime(t2^t3, -zone)
		}
		if bit(5) {
			r.Finished = fuzzTime(t3+t1, zone)
		}
		if bit(6) {
			e := int(exit)
			r.ExitCode = &e
		}
		if bit(7) && r.Spec.Command == nil {
			r.Spec.Command = []string{}
		}
		if bit(8) {
			r.Spec.Requires = []string{}
		}
		if env != "" || bit(9) {
			r.Spec.Env = map[string]string{}
			for _, kv := range strings.Split(env, ";") {
				k, v, _ := strings.Cut(kv, "=")
				r.Spec.Env[k] = v
			}
		}
		if i := int(pick) % (len(fuzzPayloads) + 1); i < len(fuzzPayloads) {
			r.Spec.Payload = json.RawMessage(fuzzPayloads[i])
		} else if json.Valid([]byte(payload)) {
			r.Spec.Payload = json.RawMessage(payload)
		}

		want, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
		if got := appendRecord(nil, &r); !bytes.Equal(got, want) {
			t.Fatalf("appendRecord\n got %s\nwant %s", got, want)
		}
		if got := r.Encode(); !bytes.Equal(got, want) {
			t.Fatalf("Encode\n got %s\nwant %s", got, want)
		}
		checkDecodeMatches(t, "encoded", want)
	})
}

func FuzzEventCodec(f *testing.F) {
	f.Add("j1", "p", "queued", "dispatched", "pool", "owner", "reason <&>", "a=b,c=d", uint64(1), uint64(2), 3, 4,
		int64(1767225600000000000), int64(7), int64(-7), int32(0), uint8(3))
	f.Add(everyEscape, "", "", "", "", "", everyEscape, "", uint64(0), uint64(0), 0, 0, int64(0), int64(0), int64(0), int32(-3600), uint8(0))
	f.Fuzz(func(t *testing.T, jobID, product, from, to, pool, owner, reason, requires string, epoch, rev uint64, attempt, priority int,
		at, created, retry int64, zone int32, flags uint8) {
		e := Event{
			JobID: jobID, Product: product, From: State(from), To: State(to), Epoch: epoch, Attempt: attempt,
			Pool: pool, Owner: owner, Reason: reason, At: fuzzTime(at, zone), Rev: rev, Priority: priority,
			Requires: split(requires), Unroutable: flags&1 != 0,
		}
		if flags&2 != 0 {
			e.Created = fuzzTime(created, zone+1)
		}
		if flags&4 != 0 {
			e.RetryAt = fuzzTime(retry, -zone)
		}
		if flags&8 != 0 && e.Requires == nil {
			e.Requires = Labels{}
		}
		want, err := json.Marshal(e)
		if err != nil {
			t.Fatalf("json.Marshal: %v", err)
		}
		if got := appendEvent(nil, &e); !bytes.Equal(got, want) {
			t.Fatalf("appendEvent\n got %s\nwant %s", got, want)
		}
		if got := e.Encode(); !bytes.Equal(got, want) {
			t.Fatalf("Encode\n got %s\nwant %s", got, want)
		}
	})
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(fullRecord().Encode())
	f.Add(benchRecord().Encode())
	f.Add([]byte(`{"ID":"x","spec":{"command":["a"],"Env":{}},"spec":{"command":[null]}}`))
	f.Add([]byte(`{"id":"\ud83d\ude00\ud800","attempt":-0,"x":[1e5,{"y":null}],"created":"2026-01-02T03:04:05.5+01:00"}`))
	f.Add([]byte(`{"id":"a" "pool":1}`))
	f.Add([]byte(`{"dispatch_gen":-1}`))
	f.Add([]byte(`{"spec":{"env":{"A":"1"}},"spec":{"env":{"B":null}}}`))
	f.Add([]byte(" null "))
	for _, in := range append(slices.Collect(maps.Values(decodeInputs)), malformedInputs...) {
		if len(in) < 1000 { // not the deeply nested ones
			f.Add([]byte(in))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got Record
		err := decodeRecord(data, &got)
		if jsonValid(data) != json.Valid(data) {
			t.Fatalf("jsonValid(%q) = %v, json.Valid says otherwise", data, !json.Valid(data))
		}
		if err == nil {
			// Self-consistency: what decodeRecord gives encodes to the
			// canonical JSON of a record, which both decoders read back
			// alike and which encodes to itself.
			enc := got.Encode()
			var back, again Record
			if err := json.Unmarshal(enc, &back); err != nil {
				t.Fatalf("json.Unmarshal(%s) of the re-encoded record: %v", enc, err)
			}
			if b, _ := json.Marshal(back); !bytes.Equal(b, enc) {
				t.Fatalf("re-encoding is not stable:\n%s\n%s", enc, b)
			}
			if err := decodeRecord(enc, &again); err != nil || !reflect.DeepEqual(again, back) {
				t.Fatalf("decodeRecord(%s) = %+v, %v; json.Unmarshal gives %+v", enc, again, err, back)
			}
		}
		comparable, repeatedLists := comparableWithJSON(data)
		if !comparable {
			return
		}
		var want Record
		jerr := json.Unmarshal(data, &want)
		if (err == nil) != (jerr == nil) {
			t.Fatalf("decodeRecord(%q): %v; json.Unmarshal: %v", data, err, jerr)
		}
		if repeatedLists {
			// encoding/json decodes a repeated array key into the slice
			// the first made, so a null element there keeps the string
			// before it; decodeRecord makes a new slice, where null is "".
			// Only a repeated key tells them apart: leave the lists out.
			got.Spec.Command, got.Spec.Requires = nil, nil
			want.Spec.Command, want.Spec.Requires = nil, nil
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeRecord(%q)\n got %#v\nwant %#v", data, got, want)
		}
	})
}

// comparableWithJSON reports whether decodeRecord must decode data as
// json.Unmarshal does: not when the record or its spec has a key that
// encoding/json matches to a field case-insensitively only. repeatedLists
// reports a repeated "spec", "command" or "requires" key.
func comparableWithJSON(data []byte) (comparable, repeatedLists bool) {
	keys, values, ok := members(data)
	if !ok {
		return true, false // not an object of members: both must fail, or see null
	}
	specs := 0
	for i, k := range keys {
		if inexactMatch(k, reflect.TypeFor[Record]()) {
			return false, false
		}
		if k != "spec" {
			continue
		}
		specs++
		specKeys, _, ok := members(values[i])
		if !ok {
			continue
		}
		lists := 0
		for _, sk := range specKeys {
			if inexactMatch(sk, reflect.TypeFor[Spec]()) {
				return false, false
			}
			if sk == "command" || sk == "requires" {
				lists++
			}
		}
		repeatedLists = repeatedLists || lists > 1
	}
	return true, repeatedLists || specs > 1
}

// members lists the keys and values of the JSON object data, repeats
// included, or reports that data is no such object.
func members(data []byte) (keys []string, values []json.RawMessage, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, false
	}
	for dec.More() {
		k, err := dec.Token()
		var v json.RawMessage
		if err != nil || dec.Decode(&v) != nil {
			return nil, nil, false
		}
		keys, values = append(keys, k.(string)), append(values, v)
	}
	return keys, values, true
}

// inexactMatch reports whether key names a field of t only case-insensitively.
func inexactMatch(key string, t reflect.Type) bool {
	for _, name := range jsonNames(t) {
		if key != name && strings.EqualFold(key, name) {
			return true
		}
	}
	return false
}

func BenchmarkRecordEncode(b *testing.B) {
	r := benchRecord()
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("codec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r.Encode()
		}
	})
}

func BenchmarkRecordDecode(b *testing.B) {
	data := benchRecord().Encode()
	b.Run("json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r Record
			if err := json.Unmarshal(data, &r); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("codec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := DecodeRecord(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestFullRecordSetsEveryField keeps the encoder's tests complete: a field
// added to Record or Spec, but not to appendRecord, shows up in fullRecord's
// comparison with json.Marshal only if fullRecord sets it.
func TestFullRecordSetsEveryField(t *testing.T) {
	t.Parallel()
	r := fullRecord()
	for _, v := range []reflect.Value{reflect.ValueOf(r), reflect.ValueOf(r.Spec)} {
		for i := range v.NumField() {
			if v.Field(i).IsZero() {
				t.Errorf("fullRecord leaves %s.%s zero: set it", v.Type().Name(), v.Type().Field(i).Name)
			}
		}
	}
}
