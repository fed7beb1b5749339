package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// WaitService waits for VM states on the server, so clients need not poll.
type WaitService interface {
	Wait(ctx context.Context, caller store.User, id string, states []string) (api.VM, error)
}

// maxWait bounds one wait request; clients wait longer by asking again.
const maxWait = 10 * time.Minute

// MountWait adds GET /api/v1/vms/{id}/wait?state=ready[,stopped]&timeout=60s
// (Fly's wait): 200 with the VM once it is in one of the states, 408 when
// the timeout passes first, 409 when it failed or was destroyed meanwhile.
func (s *Server) MountWait(ws WaitService) {
	s.handle(route{"GET /api/v1/vms/{id}/wait", authed, func(w http.ResponseWriter, r *http.Request) error {
		q := r.URL.Query()
		var states []string
		for _, st := range strings.Split(q.Get("state"), ",") {
			switch st = strings.TrimSpace(st); st {
			case "":
			case api.VMCreating, api.VMBooting, api.VMReady, api.VMStopping, api.VMStopped, api.VMFailed, api.VMDestroyed:
				states = append(states, st)
			default:
				return badRequest("state %q is not a VM state", st)
			}
		}
		if len(states) == 0 {
			states = []string{api.VMReady}
		}
		timeout := time.Minute
		if v := q.Get("timeout"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || d > maxWait {
				return badRequest("timeout=%q: want a duration up to %s, such as 60s", v, maxWait)
			}
			timeout = d
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		vm, err := ws.Wait(ctx, userFrom(r.Context()), r.PathValue("id"), states)
		if errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil {
			return errorf(http.StatusRequestTimeout, api.CodeTimeout, "vm %s is still %s after %s", vm.ID, vm.State, timeout)
		}
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusOK, vm)
		return nil
	}})
}
