package firecracker

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The fake Firecracker: when the test binary runs with
// HANGAR_FAKE_FIRECRACKER=1 it behaves as `firecracker --api-sock <sock>
// --id <id>`: it serves the API on the socket, checks each body against
// the fields the v1.16.1 spec defines (required ones present, no unknown
// ones, enums), enforces the pre-boot/post-boot rules the driver relies
// on, records every request to <dir of sock>/fake-requests.jsonl, prints a
// console line on InstanceStart, and exits on SendCtrlAltDel.
// HANGAR_FAKE_FC_FAIL="PUT /boot-source" makes that call fail with a
// fault_message, as Firecracker does.

func TestMain(m *testing.M) {
	if os.Getenv("HANGAR_FAKE_FIRECRACKER") == "1" {
		os.Exit(runFakeFirecracker(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// recorded is one request as the fake saw it.
type recorded struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
}

// schema: allowed and required fields of the bodies hangar sends, from
// the swagger definitions (Logger, MachineConfiguration, BootSource,
// Drive, Vsock, NetworkInterface, EntropyDevice, InstanceActionInfo, Vm,
// SnapshotCreateParams, SnapshotLoadParams).
type schema struct {
	allowed, required []string
	enums             map[string][]string
}

var fakeSchemas = map[string]schema{
	"PUT /logger": {allowed: []string{"level", "log_path", "show_level", "show_log_origin", "module"},
		enums: map[string][]string{"level": {"Error", "Warning", "Info", "Debug", "Trace", "Off"}}},
	"PUT /machine-config": {allowed: []string{"cpu_template", "smt", "mem_size_mib", "track_dirty_pages", "vcpu_count", "huge_pages"},
		required: []string{"mem_size_mib", "vcpu_count"}},
	"PUT /boot-source": {allowed: []string{"boot_args", "initrd_path", "kernel_image_path"}, required: []string{"kernel_image_path"}},
	"PUT /drives/": {allowed: []string{"drive_id", "partuuid", "is_root_device", "cache_type", "is_read_only", "path_on_host", "rate_limiter", "io_engine", "socket"},
		required: []string{"drive_id", "is_root_device"},
		enums:    map[string][]string{"cache_type": {"Unsafe", "Writeback"}, "io_engine": {"Sync", "Async"}}},
	"PUT /vsock":               {allowed: []string{"guest_cid", "uds_path", "vsock_id"}, required: []string{"guest_cid", "uds_path"}},
	"PUT /network-interfaces/": {allowed: []string{"guest_mac", "host_dev_name", "iface_id", "mtu", "rx_rate_limiter", "tx_rate_limiter"}, required: []string{"host_dev_name", "iface_id"}},
	"PUT /entropy":             {allowed: []string{"rate_limiter"}},
	"PUT /actions": {allowed: []string{"action_type"}, required: []string{"action_type"},
		enums: map[string][]string{"action_type": {"FlushMetrics", "InstanceStart", "SendCtrlAltDel"}}},
	"PATCH /vm": {allowed: []string{"state"}, required: []string{"state"}, enums: map[string][]string{"state": {"Paused", "Resumed"}}},
	"PUT /snapshot/create": {allowed: []string{"mem_file_path", "snapshot_path", "snapshot_type"}, required: []string{"mem_file_path", "snapshot_path"},
		enums: map[string][]string{"snapshot_type": {"Full", "Diff"}}},
	"PUT /snapshot/load": {allowed: []string{"enable_diff_snapshots", "track_dirty_pages", "mem_file_path", "mem_backend", "snapshot_path", "resume_vm", "network_overrides", "vsock_override", "clock_realtime"},
		required: []string{"snapshot_path"}},
}

type fakeFC struct {
	id, dir string
	fail    string

	mu sync.Mutex // guards the fields below
	// configured lists pre-boot resources set, besides logger.
	configured []string
	state      string // "Not started", "Running", "Paused"
	listeners  []net.Listener
}

func runFakeFirecracker(args []string) int {
	f := &fakeFC{state: "Not started", fail: os.Getenv("HANGAR_FAKE_FC_FAIL")}
	var sock string
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--api-sock":
			i++
			sock = args[i]
		case "--id":
			i++
			f.id = args[i]
		default:
			fmt.Fprintf(os.Stderr, "fake firecracker: unknown argument %q\n", args[i])
			return 1
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake firecracker: --api-sock is required")
		return 1
	}
	f.dir = filepath.Dir(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake firecracker: %v\n", err)
		return 1
	}
	srv := &http.Server{Handler: f}
	_ = srv.Serve(ln)
	return 0
}

func (f *fakeFC) record(r recorded) {
	fp, err := os.OpenFile(filepath.Join(f.dir, "fake-requests.jsonl"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer fp.Close()
	b, _ := json.Marshal(r)
	_, _ = fp.Write(append(b, '\n'))
}

func fault(w http.ResponseWriter, status int, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"fault_message": fmt.Sprintf(format, args...)})
}

func (f *fakeFC) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := recorded{Method: r.Method, Path: r.URL.Path}
	if len(body) > 0 {
		rec.Body = body
	}
	f.record(rec)
	key := r.Method + " " + r.URL.Path
	if f.fail == key {
		fault(w, http.StatusBadRequest, "injected failure for %s", key)
		return
	}
	if key == "GET /" {
		f.mu.Lock()
		st := f.state
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"app_name": "Firecracker", "id": f.id, "state": st, "vmm_version": "1.16.1-fake"})
		return
	}
	schemaKey := key
	var pathID string
	for _, prefix := range []string{"PUT /drives/", "PUT /network-interfaces/"} {
		if strings.HasPrefix(key, prefix) {
			schemaKey, pathID = prefix, strings.TrimPrefix(key, prefix)
		}
	}
	sc, ok := fakeSchemas[schemaKey]
	if !ok {
		fault(w, http.StatusBadRequest, "Invalid request method and/or path: %s %s.", r.Method, r.URL.Path)
		return
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		fault(w, http.StatusBadRequest, "An error occurred when deserializing the json body of a request: %v.", err)
		return
	}
	for k, v := range m {
		if !slices.Contains(sc.allowed, k) {
			fault(w, http.StatusBadRequest, "unknown field `%s`", k)
			return
		}
		if allowed, ok := sc.enums[k]; ok && !slices.Contains(allowed, fmt.Sprint(v)) {
			fault(w, http.StatusBadRequest, "unknown variant `%v` for %s", v, k)
			return
		}
	}
	for _, k := range sc.required {
		if _, ok := m[k]; !ok {
			fault(w, http.StatusBadRequest, "missing field `%s`", k)
			return
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	preBoot := f.state == "Not started"
	str := func(k string) string { s, _ := m[k].(string); return s }
	switch schemaKey {
	case "PUT /logger":
		// Allowed at any time before boot, and before snapshot/load.
	case "PUT /machine-config", "PUT /boot-source", "PUT /entropy", "PUT /drives/", "PUT /network-interfaces/", "PUT /vsock":
		if !preBoot {
			fault(w, http.StatusBadRequest, "The requested operation is not supported after starting the microVM.")
			return
		}
		if pathID != "" {
			idField := "drive_id"
			if schemaKey == "PUT /network-interfaces/" {
				idField = "iface_id"
			}
			if str(idField) != pathID {
				fault(w, http.StatusBadRequest, "The id from the path [%s] does not match the id from the body [%s]!", pathID, str(idField))
				return
			}
		}
		if schemaKey == "PUT /drives/" && (str("path_on_host") == "" || m["is_read_only"] == nil) {
			fault(w, http.StatusBadRequest, "virtio-block drive needs path_on_host and is_read_only")
			return
		}
		if schemaKey == "PUT /machine-config" {
			n, _ := m["vcpu_count"].(float64)
			if n < 1 || n > 32 || (n > 1 && int(n)%2 == 1) {
				fault(w, http.StatusBadRequest, "The vCPU number is invalid!")
				return
			}
		}
		if schemaKey == "PUT /vsock" {
			if cid, _ := m["guest_cid"].(float64); cid < 3 {
				fault(w, http.StatusBadRequest, "guest_cid must be >= 3")
				return
			}
			if err := f.listen(str("uds_path")); err != nil {
				fault(w, http.StatusBadRequest, "vsock: %v", err)
				return
			}
		}
		f.configured = append(f.configured, schemaKey)
	case "PUT /actions":
		switch str("action_type") {
		case "InstanceStart":
			if !preBoot || !slices.Contains(f.configured, "PUT /boot-source") {
				fault(w, http.StatusBadRequest, "Cannot start microvm that was already started or has no boot source")
				return
			}
			f.state = "Running"
			fmt.Println("fake firecracker guest console: booted")
		case "SendCtrlAltDel":
			if preBoot {
				fault(w, http.StatusBadRequest, "The requested operation is not supported before starting the microVM.")
				return
			}
			// Firecracker exits when the guest reboots on the
			// keyboard reset; answer first.
			go func() { time.Sleep(50 * time.Millisecond); os.Exit(0) }()
		}
	case "PATCH /vm":
		if preBoot {
			fault(w, http.StatusBadRequest, "The requested operation is not supported before starting the microVM.")
			return
		}
		if str("state") == "Paused" {
			f.state = "Paused"
		} else {
			f.state = "Running"
		}
	case "PUT /snapshot/create":
		if f.state != "Paused" {
			fault(w, http.StatusBadRequest, "Cannot create snapshot: the microVM is not paused")
			return
		}
		for _, p := range []string{str("snapshot_path"), str("mem_file_path")} {
			if err := os.WriteFile(p, []byte("fake "+filepath.Base(p)), 0o600); err != nil {
				fault(w, http.StatusBadRequest, "Cannot create snapshot: %v", err)
				return
			}
		}
	case "PUT /snapshot/load":
		if !preBoot || len(f.configured) > 0 {
			fault(w, http.StatusBadRequest, "Loading a microVM snapshot not allowed after configuring boot-specific resources.")
			return
		}
		mb, _ := m["mem_backend"].(map[string]any)
		if (mb == nil) == (m["mem_file_path"] == nil) {
			fault(w, http.StatusBadRequest, "exactly one of mem_backend and mem_file_path")
			return
		}
		if bt := fmt.Sprint(mb["backend_type"]); bt != "File" && bt != "Uffd" {
			fault(w, http.StatusBadRequest, "unknown variant `%s`", bt)
			return
		}
		for _, p := range []string{str("snapshot_path"), fmt.Sprint(mb["backend_path"])} {
			if _, err := os.Stat(p); err != nil {
				fault(w, http.StatusBadRequest, "Load snapshot error: %v", err)
				return
			}
		}
		if vo, ok := m["vsock_override"].(map[string]any); ok {
			if err := f.listen(fmt.Sprint(vo["uds_path"])); err != nil {
				fault(w, http.StatusBadRequest, "vsock: %v", err)
				return
			}
		}
		f.state = "Paused"
		if m["resume_vm"] == true {
			f.state = "Running"
		}
		fmt.Println("fake firecracker guest console: restored")
	}
	w.WriteHeader(http.StatusNoContent)
}

// listen creates the vsock's host socket, as Firecracker does.
func (f *fakeFC) listen(path string) error {
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	f.listeners = append(f.listeners, ln)
	return nil
}
