// Package errs gives subsystems a way to say what kind of failure an error
// is (bad input, not found, conflict, quota, unavailable) with a message fit
// for the user, without knowing about HTTP. The API maps kinds to statuses
// in one place.
package errs

import (
	"errors"
	"fmt"
)

// Kind classifies an error for the user.
type Kind int

// Kinds of user-facing errors.
const (
	Invalid     Kind = iota + 1 // the request is wrong (400)
	NotFound                    // no such resource visible to the caller (404)
	Conflict                    // the resource is in the wrong state (409)
	Quota                       // a quota or limit refuses it (429)
	Unavailable                 // try again later, e.g. an image is being built (503)
	TooLarge                    // the payload is over a limit (413)
	NoSpace                     // the VM's disk is full (507)
)

// Error is an error of a Kind whose message is safe to show the caller.
type Error struct {
	Kind Kind
	Msg  string
	Err  error // cause, for logs; not shown
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}

func (e *Error) Unwrap() error { return e.Err }

// E makes an Error of kind with a formatted message.
func E(kind Kind, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...)}
}

// Wrap makes an Error of kind with a message, keeping err as the cause.
func Wrap(kind Kind, err error, format string, args ...any) error {
	return &Error{Kind: kind, Msg: fmt.Sprintf(format, args...), Err: err}
}

// As returns the first *Error in err's chain.
func As(err error) (*Error, bool) {
	var e *Error
	ok := errors.As(err, &e)
	return e, ok
}
