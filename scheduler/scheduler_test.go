package scheduler

import (
	"sort"
	"strings"
	"testing"

	"github.com/agentqueue/fleet/job"
)

func labels(t *testing.T, s ...string) job.Labels {
	t.Helper()
	l, err := job.ParseLabels(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestPickAndCandidates(t *testing.T) {
	t.Parallel()
	linux := labels(t, "os=linux", "arch=amd64")
	gpu := labels(t, "os=linux", "gpu")
	pools := []Pool{
		{Name: "a", Caps: linux, Factories: 1, Slots: 2, Inflight: 2},
		{Name: "b", Caps: gpu, Factories: 2, Slots: 4, Inflight: 1},
		{Name: "c", Caps: linux, Factories: 0, Slots: 0},
	}
	cases := []struct {
		name     string
		req      job.Labels
		wantCand []string
		wantPick string
	}{
		{"any", nil, []string{"a", "b"}, "b"},
		{"linux", labels(t, "os=linux"), []string{"a", "b"}, "b"},
		{"amd64 only in full pool", labels(t, "arch=amd64"), []string{"a"}, ""},
		{"gpu", labels(t, "gpu"), []string{"b"}, "b"},
		{"nobody", labels(t, "os=windows"), nil, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var got []string
			cands := Candidates(tc.req, pools)
			for _, p := range cands {
				got = append(got, p.Name)
			}
			if strings.Join(got, ",") != strings.Join(tc.wantCand, ",") {
				t.Fatalf("candidates = %v, want %v", got, tc.wantCand)
			}
			p, ok := Pick(cands)
			if (tc.wantPick != "") != ok || ok && p.Name != tc.wantPick {
				t.Fatalf("pick = %v %v, want %q", p.Name, ok, tc.wantPick)
			}
		})
	}
}

func TestBeforeOrder(t *testing.T) {
	t.Parallel()
	items := []Item{{"d", 0, 3}, {"a", 5, 9}, {"b", 0, 1}, {"c", 5, 2}, {"e", 0, 1}}
	sort.Slice(items, func(i, j int) bool { return Before(items[i], items[j]) })
	var ids []string
	for _, it := range items {
		ids = append(ids, it.ID)
	}
	if got := strings.Join(ids, ""); got != "cabed" {
		t.Fatalf("order = %s, want cabed", got)
	}
}

func TestExplain(t *testing.T) {
	t.Parallel()
	full := []Pool{{Name: "a", Caps: labels(t, "os=linux"), Factories: 1, Slots: 1, Inflight: 1}}
	cases := []struct {
		name  string
		req   job.Labels
		pools []Pool
		want  string
	}{
		{"no factory", labels(t, "gpu"), nil, "no factory is live"},
		{"no capability", labels(t, "gpu"), full, "no live pool offers"},
		{"full", labels(t, "os=linux"), full, "waiting for a free slot"},
		{"room", nil, []Pool{{Name: "a", Factories: 1, Slots: 2}}, "has room"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := Explain(tc.req, tc.pools); !strings.Contains(got, tc.want) {
				t.Fatalf("Explain = %q, want %q", got, tc.want)
			}
		})
	}
}
