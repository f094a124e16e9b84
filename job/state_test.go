package job

import (
	"errors"
	"fmt"
	"testing"
)

// allowed is written out by hand, independently of the table in state.go, so
// that a change to either is caught.
var allowed = map[[2]State]bool{
	{Queued, Dispatched}: true, {Queued, Blocked}: true, {Queued, Cancelled}: true, {Queued, Dead}: true,
	{Blocked, Queued}: true, {Blocked, Cancelled}: true,
	{Dispatched, Running}: true, {Dispatched, Queued}: true, {Dispatched, Cancelled}: true, {Dispatched, Dead}: true,
	{Running, Running}: true, {Running, Succeeded}: true, {Running, Failed}: true, {Running, Dead}: true,
	{Running, Queued}: true, {Running, Cancelled}: true,
	{Failed, Queued}: true, {Failed, Dead}: true, {Failed, Cancelled}: true,
}

func TestTransitionTable(t *testing.T) {
	t.Parallel()
	for _, from := range States {
		for _, to := range States {
			name := fmt.Sprintf("%s→%s", from, to)
			want := allowed[[2]State{from, to}]
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				if got := CanTransition(from, to); got != want {
					t.Fatalf("CanTransition = %v, want %v", got, want)
				}
				err := CheckTransition(from, to)
				if want && err != nil {
					t.Fatalf("CheckTransition = %v, want nil", err)
				}
				if !want && !errors.Is(err, ErrIllegalTransition) {
					t.Fatalf("CheckTransition = %v, want ErrIllegalTransition", err)
				}
			})
		}
	}
}

func TestTerminalStatesHaveNoExit(t *testing.T) {
	t.Parallel()
	for _, s := range States {
		if s.Terminal() != (len(transitions[s]) == 0) {
			t.Errorf("%s: Terminal()=%v but has %d exits", s, s.Terminal(), len(transitions[s]))
		}
	}
	if State("bogus").Valid() || CanTransition("bogus", Queued) {
		t.Fatal("unknown state accepted")
	}
}
