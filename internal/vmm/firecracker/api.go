package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
)

// The request bodies below follow Firecracker's published API,
// src/firecracker/swagger/firecracker.yaml at v1.16.1 (the "definitions"
// named in each comment). Only the fields hangar sets are declared; the
// JSON names are the spec's.
//
// Why a hand-written client and not firecracker-go-sdk: the SDK pulls in
// go-openapi/go-swagger, logrus, CNI plugins and more for the ~12 calls
// hangar makes, its last release (v1.0.0, 2022) is frozen at API 1.4.1 and
// lacks fields hangar uses (snapshot-load overrides), and E2B and flintlock
// ended up bypassing its Machine type too. These calls are plain JSON over
// HTTP on a Unix socket.

// Logger is definitions.Logger (PUT /logger).
type Logger struct {
	// LogPath: "Path to the named pipe or file for the human readable log
	// output." Firecracker creates the file if missing.
	LogPath string `json:"log_path"`
	// Level: enum Error, Warning, Info, Debug, Trace, Off.
	Level         string `json:"level"`
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
}

// MachineConfiguration is definitions.MachineConfiguration
// (PUT /machine-config); vcpu_count and mem_size_mib are required.
type MachineConfiguration struct {
	// VCPUCount: 1-32, "either 1 or an even number".
	VCPUCount  int `json:"vcpu_count"`
	MemSizeMiB int `json:"mem_size_mib"`
	// SMT: simultaneous multithreading, x86 only; default false.
	SMT bool `json:"smt"`
	// TrackDirtyPages enables diff snapshots; hangar takes full ones.
	TrackDirtyPages bool `json:"track_dirty_pages"`
}

// BootSource is definitions.BootSource (PUT /boot-source);
// kernel_image_path is required. On x86_64 Firecracker v1.16 boots an
// uncompressed ELF vmlinux, not a bzImage.
type BootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	BootArgs        string `json:"boot_args,omitempty"`
	InitrdPath      string `json:"initrd_path,omitempty"`
}

// Drive is definitions.Drive (PUT /drives/{drive_id}); drive_id and
// is_root_device are required, is_read_only and path_on_host are required
// for virtio-block.
type Drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
	// CacheType: enum Unsafe (default: guest flushes are ignored) or
	// Writeback (flushes reach the host file). The writable upper disk
	// uses Writeback so a guest fsync means what it says.
	CacheType string `json:"cache_type,omitempty"`
	// IOEngine: enum Sync (default) or Async (io_uring, host >= 5.10.51).
	IOEngine string `json:"io_engine,omitempty"`
}

// Vsock is definitions.Vsock (PUT /vsock); guest_cid (>= 3) and uds_path
// are required. Host-initiated connections: connect to uds_path and send
// "CONNECT <port>\n".
type Vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

// NetworkInterface is definitions.NetworkInterface
// (PUT /network-interfaces/{iface_id}); host_dev_name and iface_id are
// required.
type NetworkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

// EntropyDevice is definitions.EntropyDevice (PUT /entropy): a
// virtio-rng device; all fields (a rate limiter) optional.
type EntropyDevice struct{}

// InstanceActionInfo is definitions.InstanceActionInfo (PUT /actions);
// action_type is one of FlushMetrics, InstanceStart, SendCtrlAltDel.
type InstanceActionInfo struct {
	ActionType string `json:"action_type"`
}

// Actions.
const (
	ActionInstanceStart  = "InstanceStart"
	ActionSendCtrlAltDel = "SendCtrlAltDel"
)

// VM is definitions.Vm (PATCH /vm); state is Paused or Resumed.
type VM struct {
	State string `json:"state"`
}

// VM states.
const (
	StatePaused  = "Paused"
	StateResumed = "Resumed"
)

// SnapshotCreateParams is definitions.SnapshotCreateParams
// (PUT /snapshot/create, the VM must be Paused); mem_file_path and
// snapshot_path are required, snapshot_type is Full (default) or Diff.
type SnapshotCreateParams struct {
	SnapshotPath string `json:"snapshot_path"`
	MemFilePath  string `json:"mem_file_path"`
	SnapshotType string `json:"snapshot_type"`
}

// MemoryBackend is definitions.MemoryBackend; backend_type is File or
// Uffd, both fields required.
type MemoryBackend struct {
	BackendType string `json:"backend_type"`
	BackendPath string `json:"backend_path"`
}

// VsockOverride is definitions.VsockOverride (Firecracker >= 1.16).
type VsockOverride struct {
	UDSPath string `json:"uds_path"`
}

// NetworkOverride is definitions.NetworkOverride (Firecracker >= 1.12).
type NetworkOverride struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
}

// SnapshotLoadParams is definitions.SnapshotLoadParams
// (PUT /snapshot/load, only on a fresh process, after at most the logger
// and metrics); snapshot_path is required and exactly one of mem_backend
// or the deprecated mem_file_path.
type SnapshotLoadParams struct {
	SnapshotPath    string         `json:"snapshot_path"`
	MemBackend      *MemoryBackend `json:"mem_backend"`
	TrackDirtyPages bool           `json:"track_dirty_pages"`
	// ResumeVM false: hangar resumes with PATCH /vm after load, so a
	// failure is attributed to the right step.
	ResumeVM         bool              `json:"resume_vm"`
	NetworkOverrides []NetworkOverride `json:"network_overrides,omitempty"`
	VsockOverride    *VsockOverride    `json:"vsock_override,omitempty"`
}

// InstanceInfo is definitions.InstanceInfo (GET /).
type InstanceInfo struct {
	AppName    string `json:"app_name"`
	ID         string `json:"id"`
	State      string `json:"state"`
	VMMVersion string `json:"vmm_version"`
}

// APIError is a non-2xx answer; Firecracker's body is definitions.Error,
// {"fault_message": "..."}.
type APIError struct {
	Method       string
	Path         string
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("firecracker %s %s: %d: %s", e.Method, e.Path, e.Status, msg)
}

// Client calls one Firecracker process's API socket.
type Client struct {
	sock string
	hc   *http.Client
}

// NewClient returns a client for the API socket at sock.
func NewClient(sock string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		// One request at a time per VM; a kept-alive connection saves a
		// dial per call during configuration.
		MaxIdleConns:      1,
		DisableKeepAlives: false,
	}
	return &Client{sock: sock, hc: &http.Client{Transport: tr}}
}

// Do sends body (nil for none) as JSON and decodes a 200 answer into out
// (nil to ignore). Any non-2xx status is an *APIError.
func (c *Client) Do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encode: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, rd)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		ae := &APIError{Method: method, Path: path, Status: resp.StatusCode}
		var fault struct {
			FaultMessage string `json:"fault_message"`
		}
		if json.Unmarshal(data, &fault) == nil {
			ae.FaultMessage = fault.FaultMessage
		} else {
			ae.FaultMessage = strings.TrimSpace(string(data))
		}
		return ae
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// Close drops idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// PutLogger is PUT /logger.
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.Do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMachineConfig is PUT /machine-config.
func (c *Client) PutMachineConfig(ctx context.Context, m MachineConfiguration) error {
	return c.Do(ctx, http.MethodPut, "/machine-config", m, nil)
}

// PutBootSource is PUT /boot-source.
func (c *Client) PutBootSource(ctx context.Context, b BootSource) error {
	return c.Do(ctx, http.MethodPut, "/boot-source", b, nil)
}

// PutDrive is PUT /drives/{drive_id}.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	if d.DriveID == "" {
		return errors.New("firecracker drive: empty drive_id")
	}
	return c.Do(ctx, http.MethodPut, "/drives/"+d.DriveID, d, nil)
}

// PutVsock is PUT /vsock.
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.Do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutNetworkInterface is PUT /network-interfaces/{iface_id}.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	if n.IfaceID == "" {
		return errors.New("firecracker network interface: empty iface_id")
	}
	return c.Do(ctx, http.MethodPut, "/network-interfaces/"+n.IfaceID, n, nil)
}

// PutEntropy is PUT /entropy.
func (c *Client) PutEntropy(ctx context.Context) error {
	return c.Do(ctx, http.MethodPut, "/entropy", EntropyDevice{}, nil)
}

// Action is PUT /actions.
func (c *Client) Action(ctx context.Context, action string) error {
	return c.Do(ctx, http.MethodPut, "/actions", InstanceActionInfo{ActionType: action}, nil)
}

// PatchVM is PATCH /vm.
func (c *Client) PatchVM(ctx context.Context, state string) error {
	return c.Do(ctx, http.MethodPatch, "/vm", VM{State: state}, nil)
}

// CreateSnapshot is PUT /snapshot/create.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.Do(ctx, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot is PUT /snapshot/load.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	return c.Do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// DescribeInstance is GET /.
func (c *Client) DescribeInstance(ctx context.Context) (InstanceInfo, error) {
	var ii InstanceInfo
	err := c.Do(ctx, http.MethodGet, "/", nil, &ii)
	return ii, err
}
