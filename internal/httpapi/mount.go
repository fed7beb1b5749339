package httpapi

import "net/http"

// HandlerFunc is a subsystem's route handler. It returns its error instead
// of writing it, so the server maps it (errs kinds, store sentinels) and
// logs it in one place, as for the built-in routes.
type HandlerFunc func(w http.ResponseWriter, r *http.Request) error

// MountAdminFunc serves h at pattern for admin keys only, with the server's
// error mapping (MountAdmin leaves errors to the handler).
func (s *Server) MountAdminFunc(pattern string, h HandlerFunc) {
	s.handle(route{pattern, admin, handlerFunc(h)})
}

// DecodeJSON is the API's strict decoder for subsystems' routes: exactly
// one JSON object of application/json, unknown fields refused. Its errors
// are ready to return from a HandlerFunc.
func DecodeJSON(r *http.Request, v any) error { return decodeJSON(r, v) }

// WriteJSON writes v as the API writes every answer.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }
