package job

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// Labels is a canonical capability set: sorted, unique "key=value" strings.
// A bare label "gpu" is stored as "gpu=true".
type Labels []string

const (
	maxLabels     = 32
	maxLabelPart  = 64
	poolNameLimit = 64
)

// ParseLabels validates and canonicalises capability labels.
func ParseLabels(in []string) (Labels, error) {
	if len(in) > maxLabels {
		return nil, fmt.Errorf("%d capability labels, the limit is %d", len(in), maxLabels)
	}
	seen := make(map[string]string, len(in))
	out := make(Labels, 0, len(in))
	for _, raw := range in {
		k, v, ok := strings.Cut(raw, "=")
		if !ok {
			v = "true"
		}
		if !validLabelPart(k) || !validLabelPart(v) {
			return nil, fmt.Errorf("capability %q: use key=value (or a bare key), each part 1-%d characters from [A-Za-z0-9_.-]", raw, maxLabelPart)
		}
		if prev, dup := seen[k]; dup {
			if prev != v {
				return nil, fmt.Errorf("capability %q given twice with different values (%q, %q)", k, prev, v)
			}
			continue
		}
		seen[k] = v
		out = append(out, k+"="+v)
	}
	slices.Sort(out)
	return out, nil
}

func validLabelPart(s string) bool {
	if len(s) == 0 || len(s) > maxLabelPart {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// Covers reports whether every label of req is in l. Both must be canonical.
func (l Labels) Covers(req Labels) bool {
	i := 0
	for _, r := range req {
		for i < len(l) && l[i] < r {
			i++
		}
		if i == len(l) || l[i] != r {
			return false
		}
	}
	return true
}

// Intersect returns the labels in both l and o.
func (l Labels) Intersect(o Labels) Labels {
	out := Labels{}
	for _, x := range l {
		if _, ok := slices.BinarySearch(o, x); ok {
			out = append(out, x)
		}
	}
	return out
}

// Key is a canonical string for the set, used to group jobs by what they require.
func (l Labels) Key() string { return strings.Join(l, ",") }

// PoolName derives the default pool of a factory from its capabilities:
// legible ("arch-amd64_os-linux") when short enough, else a stable hash.
func PoolName(caps Labels) string {
	if len(caps) == 0 {
		return "default"
	}
	var b strings.Builder
	for i, c := range caps {
		if i > 0 {
			b.WriteByte('_')
		}
		for j := 0; j < len(c); j++ {
			switch ch := c[j]; ch {
			case '=', '.':
				b.WriteByte('-')
			default:
				b.WriteByte(ch)
			}
		}
	}
	if b.Len() <= poolNameLimit {
		return b.String()
	}
	sum := sha256.Sum256([]byte(caps.Key()))
	return "caps-" + hex.EncodeToString(sum[:8])
}
