package httpapi

import (
	"context"
	"net/http"

	"github.com/hangar-vm/hangar/internal/store"
	"github.com/hangar-vm/hangar/pkg/api"
)

// Hibernator parks VMs on disk and brings them back. It is separate from
// VMService so that services without hibernation need not stub it.
type Hibernator interface {
	// Hibernate writes a ready cli or base VM's memory and device state
	// to disk and ends its hypervisor.
	Hibernate(ctx context.Context, caller store.User, id string) (api.VM, error)
	// Resume brings a hibernated VM back, ready.
	Resume(ctx context.Context, caller store.User, id string) (api.VM, error)
}

// MountHibernation adds POST /api/v1/vms/{id}/hibernate and …/resume.
// Both answer once the VM is hibernated or ready again (seconds, not
// minutes), so the caller needs no polling.
func (s *Server) MountHibernation(h Hibernator) {
	for _, rt := range []route{
		{"POST /api/v1/vms/{id}/hibernate", authed, func(w http.ResponseWriter, r *http.Request) error {
			vm, err := h.Hibernate(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, vm)
			return nil
		}},
		{"POST /api/v1/vms/{id}/resume", authed, func(w http.ResponseWriter, r *http.Request) error {
			vm, err := h.Resume(r.Context(), userFrom(r.Context()), r.PathValue("id"))
			if err != nil {
				return err
			}
			writeJSON(w, http.StatusOK, vm)
			return nil
		}},
	} {
		s.handle(rt)
	}
}
