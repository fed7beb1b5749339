package httpapi

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/hangar-vm/hangar/internal/errs"
	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// apiError is an error with the HTTP status and code it should be shown as.
// Handlers return these; anything else becomes a 500 whose details go to the
// log only.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.message }

func errorf(status int, code, format string, args ...any) error {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) error {
	return errorf(http.StatusBadRequest, api.CodeBadRequest, format, args...)
}

func notFound(what string) error {
	return errorf(http.StatusNotFound, api.CodeNotFound, "%s not found", what)
}

// toAPIError maps an error to what the client sees. Store sentinels map in
// this one place.
func toAPIError(err error) *apiError {
	var ae *apiError
	if e, ok := errs.As(err); ok {
		switch e.Kind {
		case errs.Invalid:
			return &apiError{http.StatusBadRequest, api.CodeBadRequest, e.Msg}
		case errs.NotFound:
			return &apiError{http.StatusNotFound, api.CodeNotFound, e.Msg}
		case errs.Conflict:
			return &apiError{http.StatusConflict, api.CodeConflict, e.Msg}
		case errs.Quota:
			return &apiError{http.StatusTooManyRequests, api.CodeQuotaExceeded, e.Msg}
		case errs.Unavailable:
			return &apiError{http.StatusServiceUnavailable, api.CodeUnavailable, e.Msg}
		case errs.TooLarge:
			return &apiError{http.StatusRequestEntityTooLarge, api.CodeTooLarge, e.Msg}
		case errs.NoSpace:
			return &apiError{http.StatusInsufficientStorage, api.CodeNoSpace, e.Msg}
		}
	}
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, store.ErrNotFound):
		return &apiError{http.StatusNotFound, api.CodeNotFound, "not found"}
	case errors.Is(err, store.ErrConflict):
		return &apiError{http.StatusConflict, api.CodeConflict, "already exists"}
	default:
		return &apiError{http.StatusInternalServerError, api.CodeInternal, "internal error; the request id in X-Request-Id finds it in the daemon's log"}
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, api.ErrorResponse{Error: api.ErrorBody{Code: e.code, Message: e.message}})
}

// decodeJSON reads exactly one JSON object into v. Unknown fields are refused
// with a message naming the field; bodies over the server's limit are 413.
// The content type must say JSON (a form post from another site's page
// cannot), and nothing may follow the object (a body that is two
// documents is not one request).
func decodeJSON(r *http.Request, v any) error {
	ct := r.Header.Get("Content-Type")
	if mt, _, _ := strings.Cut(ct, ";"); strings.TrimSpace(strings.ToLower(mt)) != "application/json" {
		if ct == "" {
			return errorf(http.StatusUnsupportedMediaType, api.CodeBadRequest, "content type must be application/json; the request has none")
		}
		return errorf(http.StatusUnsupportedMediaType, api.CodeBadRequest, "content type must be application/json, not %q", ct)
	}
	// Every request body is an object: null, a list or a bare value would
	// otherwise decode as an empty request.
	br := bufio.NewReader(r.Body)
	if c, err := firstNonSpace(br); err == nil && c != '{' {
		return badRequest("request body must be a JSON object, not %s", jsonKind(c))
	}
	dec := json.NewDecoder(br)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooBig *http.MaxBytesError
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &tooBig):
			return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body is larger than %d bytes", tooBig.Limit)
		case errors.Is(err, io.EOF):
			return badRequest("request body is empty; a JSON object is required")
		case errors.Is(err, io.ErrUnexpectedEOF):
			return badRequest("malformed JSON: the body ends early")
		case errors.As(err, &syn):
			return badRequest("malformed JSON at byte %d: %v", syn.Offset, err)
		case errors.As(err, &typ):
			return badRequest("field %q must be %s, not %s", typ.Field, typ.Type, typ.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return badRequest("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		default:
			return badRequest("invalid JSON body: %v", err)
		}
	}
	// Token, unlike More, also sees a stray closing bracket.
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "request body is larger than %d bytes", tooBig.Limit)
		}
		return badRequest("request body must hold a single JSON object; data follows it at byte %d", dec.InputOffset())
	}
	return nil
}

// firstNonSpace peeks at the first byte after JSON white space.
func firstNonSpace(br *bufio.Reader) (byte, error) {
	for {
		b, err := br.ReadByte()
		if err != nil {
			return 0, err
		}
		switch b {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return b, br.UnreadByte()
	}
}

// jsonKind names the JSON value a first byte starts.
func jsonKind(c byte) string {
	switch {
	case c == '[':
		return "a list"
	case c == 'n':
		return "null"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a boolean"
	case c == '-' || (c >= '0' && c <= '9'):
		return "a number"
	}
	return "malformed JSON"
}
