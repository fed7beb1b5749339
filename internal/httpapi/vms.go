package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// VMService is what the API needs of the VM manager. Every method is scoped
// to the caller: a VM of another user is "not found" unless the caller is an
// admin. Errors carry an errs.Kind.
type VMService interface {
	Create(ctx context.Context, caller store.User, req api.CreateVMRequest) (api.VM, error)
	Get(ctx context.Context, caller store.User, id string) (api.VM, error)
	List(ctx context.Context, caller store.User) ([]api.VM, error)
	Exec(ctx context.Context, caller store.User, id string, req api.ExecRequest, stdout, stderr io.Writer) (exitCode int, err error)
	PutFile(ctx context.Context, caller store.User, id, path string, mode uint32, r io.Reader) error
	// GetFile returns the file's content as a stream and its size and mode
	// (known before the content, so a failed read is an error status).
	GetFile(ctx context.Context, caller store.User, id, path string) (io.ReadCloser, api.FileInfo, error)
	// Logs writes the console log (service "" or "console") or one
	// service's log to w, following it while follow is set and the VM runs.
	Logs(ctx context.Context, caller store.User, id, service string, follow bool, w io.Writer) error
	Stop(ctx context.Context, caller store.User, id string) (api.VM, error)
	Start(ctx context.Context, caller store.User, id string) (api.VM, error)
	Destroy(ctx context.Context, caller store.User, id string) error
}

// MountVMs adds the VM routes backed by vms.
func (s *Server) MountVMs(vms VMService) {
	for _, rt := range []route{
		{"POST /api/v1/vms", authed, func(w http.ResponseWriter, r *http.Request) error {
			var req api.CreateVMRequest
			if err := decodeJSON(r, &req); err != nil {
				return err
			}
			vm, err := vms.Create(r.Context(), userFrom(r.Context()), req)
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusCreated, vm)
			return nil
		}},
		{"GET /api/v1/vms", authed, func(w http.ResponseWriter, r *http.Request) error {
			list, err := vms.List(r.Context(), userFrom(r.Context()))
			if err != nil {
				return err
			}
			if list == nil {
				list = []api.VM{}
			}
			writeJSON(w, http.StatusOK, list)
			return nil
		}},
		{"GET /api/v1/vms/{id}", authed, func(w http.ResponseWriter, r *http.Request) error {
			vm, err := vms.Get(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, vm)
			return nil
		}},
		{"POST /api/v1/vms/{id}/stop", authed, func(w http.ResponseWriter, r *http.Request) error {
			vm, err := vms.Stop(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusAccepted, vm)
			return nil
		}},
		{"POST /api/v1/vms/{id}/start", authed, func(w http.ResponseWriter, r *http.Request) error {
			vm, err := vms.Start(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusAccepted, vm)
			return nil
		}},
		{"DELETE /api/v1/vms/{id}", authed, func(w http.ResponseWriter, r *http.Request) error {
			if err := vms.Destroy(r.Context(), userFrom(r.Context()), r.PathValue("id")); err != nil {
				return err
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}},
		{"POST /api/v1/vms/{id}/exec", authed, func(w http.ResponseWriter, r *http.Request) error {
			return s.handleExec(w, r, vms)
		}},
		{"GET /api/v1/vms/{id}/files", authed, func(w http.ResponseWriter, r *http.Request) error {
			path := r.URL.Query().Get("path")
			if path == "" {
				return badRequest("query parameter path is required")
			}
			rc, fi, err := vms.GetFile(r.Context(), userFrom(r.Context()), r.PathValue("id"), path)
			if err != nil {
				return err
			}
			defer rc.Close()
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Content-Length", strconv.FormatInt(fi.Size, 10))
			w.Header().Set("X-File-Mode", strconv.FormatUint(uint64(fi.Mode), 8))
			_, err = io.Copy(w, rc)
			if err != nil {
				logFrom(r.Context(), s.log).Warn("file download cut short", "err", err)
			}
			return nil
		}},
		{"GET /api/v1/vms/{id}/logs", authed, func(w http.ResponseWriter, r *http.Request) error {
			q := r.URL.Query()
			follow := q.Get("follow") == "1" || q.Get("follow") == "true"
			fw := &flushWriter{w: w, rc: http.NewResponseController(w)}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			if follow {
				_ = fw.rc.SetWriteDeadline(time.Time{})
			}
			ctx := r.Context()
			if follow {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				go func() {
					select {
					case <-s.closing:
						cancel()
					case <-ctx.Done():
					}
				}()
			}
			return vms.Logs(ctx, userFrom(r.Context()), r.PathValue("id"), q.Get("service"), follow, fw)
		}},
	} {
		s.handle(rt)
	}
	// Uploads carry file contents: their own body limit, not the JSON one.
	s.handleLimit(route{"PUT /api/v1/vms/{id}/files", authed, func(w http.ResponseWriter, r *http.Request) error {
		path := r.URL.Query().Get("path")
		if path == "" {
			return badRequest("query parameter path is required")
		}
		mode := uint64(0o644)
		if m := r.URL.Query().Get("mode"); m != "" {
			var err error
			if mode, err = strconv.ParseUint(m, 8, 32); err != nil || mode > 0o7777 {
				return badRequest("mode %q must be octal such as 0644", m)
			}
		}
		if err := vms.PutFile(r.Context(), userFrom(r.Context()), r.PathValue("id"), path, uint32(mode), r.Body); err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return errorf(http.StatusRequestEntityTooLarge, api.CodeTooLarge, "file is larger than %d bytes", s.maxFileBytes())
			}
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}}, s.maxFileBytes())
}

// flushWriter flushes after every write so streamed output arrives live.
type flushWriter struct {
	mu sync.Mutex // guards w: stdout and stderr copiers write concurrently
	w  io.Writer
	rc *http.ResponseController
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := f.w.Write(p)
	_ = f.rc.Flush()
	return n, err
}

// frameWriter turns one output stream of a streaming exec into NDJSON frames.
type frameWriter struct {
	stream string
	enc    *json.Encoder
	mu     *sync.Mutex // shared by stdout and stderr: guards enc
	rc     *http.ResponseController
}

func (f *frameWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enc.Encode(api.ExecFrame{Stream: f.stream, Data: string(p)}); err != nil {
		return 0, err
	}
	_ = f.rc.Flush()
	return len(p), nil
}

// limitedBuffer keeps at most max bytes and notes what it dropped, so a
// chatty command cannot exhaust the daemon's memory.
type limitedBuffer struct {
	buf     []byte
	max     int
	dropped int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := b.max - len(b.buf)
	if room > len(p) {
		room = len(p)
	}
	if room > 0 {
		b.buf = append(b.buf, p[:room]...)
	}
	b.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func (b *limitedBuffer) String() string {
	if b.dropped > 0 {
		return string(b.buf) + "\n[hangar: " + strconv.Itoa(b.dropped) + " more bytes dropped; use ?stream=1 for long output]\n"
	}
	return string(b.buf)
}

// maxExecOutput bounds each stream of a buffered exec answer.
const maxExecOutput = 8 << 20

func (s *Server) handleExec(w http.ResponseWriter, r *http.Request, vms VMService) error {
	var req api.ExecRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if len(req.Argv) == 0 {
		return badRequest("argv must name a program")
	}
	if req.TimeoutS < 0 {
		return badRequest("timeout_s must not be negative")
	}
	caller, id := userFrom(r.Context()), r.PathValue("id")
	start := time.Now()
	q := r.URL.Query().Get("stream")
	if q == "1" || q == "true" {
		// Check the VM first so that a missing or stopped VM is a proper
		// error status, not a frame in a 200 stream.
		if _, err := vms.Get(r.Context(), caller, id); err != nil {
			return err
		}
		rc := http.NewResponseController(w)
		_ = rc.SetWriteDeadline(time.Time{})
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		var mu sync.Mutex
		enc := json.NewEncoder(w)
		code, err := vms.Exec(r.Context(), caller, id, req,
			&frameWriter{stream: "stdout", enc: enc, mu: &mu, rc: rc},
			&frameWriter{stream: "stderr", enc: enc, mu: &mu, rc: rc})
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			_ = enc.Encode(api.ExecFrame{Error: toAPIError(err).message})
			return nil
		}
		_ = enc.Encode(api.ExecFrame{ExitCode: &code})
		return nil
	}
	stdout := &limitedBuffer{max: maxExecOutput}
	stderr := &limitedBuffer{max: maxExecOutput}
	code, err := vms.Exec(r.Context(), caller, id, req, stdout, stderr)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, api.ExecResponse{ExitCode: code, Stdout: stdout.String(), Stderr: stderr.String(), DurationMS: time.Since(start).Milliseconds()})
	return nil
}
