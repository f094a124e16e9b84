package job

import "errors"

// Sentinel errors. The control API carries them across the wire as codes
// (see Code and ErrorForCode) so errors.Is works on both sides.
var (
	ErrStaleEpoch        = errors.New("job: stale epoch")
	ErrNotFound          = errors.New("job: not found")
	ErrIllegalTransition = errors.New("job: illegal transition")
	ErrNotOwner          = errors.New("job: not the owner")
	ErrInvalidSpec       = errors.New("job: invalid spec")
	ErrBadRequest        = errors.New("job: bad request")
	ErrLeaseHeld         = errors.New("job: lease held by another factory")
	ErrFinished          = errors.New("job: already finished")
)

var codes = []struct {
	code string
	err  error
}{
	{"stale_epoch", ErrStaleEpoch},
	{"not_found", ErrNotFound},
	{"illegal_transition", ErrIllegalTransition},
	{"not_owner", ErrNotOwner},
	{"invalid_spec", ErrInvalidSpec},
	{"bad_request", ErrBadRequest},
	{"lease_held", ErrLeaseHeld},
	{"finished", ErrFinished},
}

// Code returns the wire code of err's sentinel, or "internal".
func Code(err error) string {
	for _, c := range codes {
		if errors.Is(err, c.err) {
			return c.code
		}
	}
	return "internal"
}

// ErrorForCode returns the sentinel for a wire code, or nil if unknown.
func ErrorForCode(code string) error {
	for _, c := range codes {
		if c.code == code {
			return c.err
		}
	}
	return nil
}
