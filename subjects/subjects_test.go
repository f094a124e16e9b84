package subjects

import (
	"strings"
	"testing"
)

func TestValidToken(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		in   string
		want bool
	}{
		{"simple", "acme", true},
		{"dash underscore digits", "a-b_C9", true},
		{"max length", strings.Repeat("a", MaxTokenLen), true},
		{"empty", "", false},
		{"too long", strings.Repeat("a", MaxTokenLen+1), false},
		{"dot", "a.b", false},
		{"star", "a*", false},
		{"gt", ">", false},
		{"space", "a b", false},
		{"unicode", "prodüct", false},
		{"slash", "a/b", false},
		{"equals", "a=b", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := ValidToken(tc.in); got != tc.want {
				t.Fatalf("ValidToken(%q) = %v, want %v", tc.in, got, tc.want)
			}
			if err := CheckToken("product", tc.in); (err == nil) != tc.want {
				t.Fatalf("CheckToken(%q) = %v, want ok=%v", tc.in, err, tc.want)
			}
		})
	}
}

func TestProductFromIngest(t *testing.T) {
	t.Parallel()
	if p, ok := ProductFromIngest(Ingest("acme")); !ok || p != "acme" {
		t.Fatalf("got %q %v", p, ok)
	}
	for _, s := range []string{"fleet.ingest", "fleet.ingest.a.b", "fleet.jobs.a"} {
		if _, ok := ProductFromIngest(s); ok {
			t.Fatalf("ProductFromIngest(%q) accepted", s)
		}
	}
}

func FuzzValidToken(f *testing.F) {
	for _, s := range []string{"acme", "", "a.b", "*", ">", strings.Repeat("x", 70)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !ValidToken(s) {
			return
		}
		// A valid token must never change the shape of a subject.
		if strings.ContainsAny(s, ".*> \t\r\n") || len(s) > MaxTokenLen {
			t.Fatalf("ValidToken accepted %q", s)
		}
		if p, ok := ProductFromIngest(Ingest(s)); !ok || p != s {
			t.Fatalf("round trip of %q failed", s)
		}
	})
}
