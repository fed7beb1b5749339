package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hangar-vm/hangar/pkg/api"
)

// CreateVM asks for a new VM; it boots in the background (watch its state
// with GetVM or WaitVM).
func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest) (api.VM, error) {
	var vm api.VM
	return vm, c.Do(ctx, http.MethodPost, "/api/v1/vms", req, &vm)
}

// GetVM returns one VM.
func (c *Client) GetVM(ctx context.Context, id string) (api.VM, error) {
	var vm api.VM
	return vm, c.Do(ctx, http.MethodGet, "/api/v1/vms/"+url.PathEscape(id), nil, &vm)
}

// ListVMs lists the caller's VMs (admin: all).
func (c *Client) ListVMs(ctx context.Context) ([]api.VM, error) {
	var vms []api.VM
	return vms, c.Do(ctx, http.MethodGet, "/api/v1/vms", nil, &vms)
}

// StopVM shuts a VM down.
func (c *Client) StopVM(ctx context.Context, id string) (api.VM, error) {
	var vm api.VM
	return vm, c.Do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(id)+"/stop", nil, &vm)
}

// StartVM boots a stopped or failed VM again.
func (c *Client) StartVM(ctx context.Context, id string) (api.VM, error) {
	var vm api.VM
	return vm, c.Do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(id)+"/start", nil, &vm)
}

// HibernateVM writes a VM's memory to disk and ends its hypervisor; it
// returns once the VM is hibernated.
func (c *Client) HibernateVM(ctx context.Context, id string) (api.VM, error) {
	var vm api.VM
	return vm, c.Do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(id)+"/hibernate", nil, &vm)
}

// ResumeVM brings a hibernated VM back; it returns once the VM is ready.
// Exec, files and prompts resume a hibernated VM by themselves.
func (c *Client) ResumeVM(ctx context.Context, id string) (api.VM, error) {
	var vm api.VM
	return vm, c.Do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(id)+"/resume", nil, &vm)
}

// DeleteVM destroys a VM; its logs stay readable.
func (c *Client) DeleteVM(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/vms/"+url.PathEscape(id), nil, nil)
}

// WaitVM polls until the VM is in one of states (or failed/destroyed, which
// end the wait with an error unless asked for), or ctx ends.
func (c *Client) WaitVM(ctx context.Context, id string, states ...string) (api.VM, error) {
	// The server waits (GET …/wait); a wait longer than a minute asks
	// again. Servers without the route are polled.
	q := url.Values{"state": {strings.Join(states, ",")}}
	for {
		timeout := time.Minute
		if dl, ok := ctx.Deadline(); ok {
			timeout = min(timeout, time.Until(dl))
		}
		if timeout < time.Second {
			timeout = time.Second
		}
		q.Set("timeout", timeout.Round(time.Second).String())
		var vm api.VM
		err := c.Do(ctx, http.MethodGet, "/api/v1/vms/"+url.PathEscape(id)+"/wait?"+q.Encode(), nil, &vm)
		var ae *Error
		switch {
		case err == nil:
			return vm, nil
		case errors.As(err, &ae) && ae.Status == http.StatusRequestTimeout:
			if ctx.Err() != nil {
				return vm, fmt.Errorf("vm %s: %s: %w", id, ae.Message, ctx.Err())
			}
			continue
		case errors.As(err, &ae) && ae.Status == http.StatusNotFound && ae.Code == api.CodeNotFound && strings.HasPrefix(ae.Message, "no route"):
			return c.pollVM(ctx, id, states)
		case ctx.Err() != nil:
			got, _ := c.GetVM(context.WithoutCancel(ctx), id)
			return got, fmt.Errorf("vm %s still %s: %w", id, got.State, ctx.Err())
		default:
			return vm, err
		}
	}
}

// pollVM is WaitVM for servers without the wait route.
func (c *Client) pollVM(ctx context.Context, id string, states []string) (api.VM, error) {
	want := map[string]bool{}
	for _, s := range states {
		want[s] = true
	}
	for {
		vm, err := c.GetVM(ctx, id)
		if err != nil {
			return vm, err
		}
		if want[vm.State] {
			return vm, nil
		}
		if vm.State == api.VMFailed || vm.State == api.VMDestroyed {
			return vm, fmt.Errorf("vm %s is %s: %s", id, vm.State, vm.LastError)
		}
		select {
		case <-ctx.Done():
			return vm, fmt.Errorf("vm %s still %s: %w", id, vm.State, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Exec runs a command and returns its whole output.
func (c *Client) Exec(ctx context.Context, id string, req api.ExecRequest) (api.ExecResponse, error) {
	var out api.ExecResponse
	return out, c.Do(ctx, http.MethodPost, "/api/v1/vms/"+url.PathEscape(id)+"/exec", req, &out)
}

// ExecStream runs a command, writing its output as it comes; it returns the
// exit code.
func (c *Client) ExecStream(ctx context.Context, id string, req api.ExecRequest, stdout, stderr io.Writer) (int, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return 0, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/api/v1/vms/"+url.PathEscape(id)+"/exec?stream=1", bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := c.send(hr)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 8<<20)
	for sc.Scan() {
		var f api.ExecFrame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return 0, fmt.Errorf("decode exec frame: %w", err)
		}
		switch {
		case f.Error != "":
			return 0, fmt.Errorf("exec: %s", f.Error)
		case f.ExitCode != nil:
			return *f.ExitCode, nil
		case f.Stream == "stderr":
			_, _ = io.WriteString(stderr, f.Data)
		default:
			_, _ = io.WriteString(stdout, f.Data)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("exec stream: %w", err)
	}
	return 0, fmt.Errorf("exec stream ended without an exit code")
}

// PutFile writes r to path inside the VM with mode.
func (c *Client) PutFile(ctx context.Context, id, path string, mode uint32, r io.Reader) error {
	u := c.base + "/api/v1/vms/" + url.PathEscape(id) + "/files?path=" + url.QueryEscape(path) + "&mode=" + strconv.FormatUint(uint64(mode), 8)
	hr, err := http.NewRequestWithContext(ctx, http.MethodPut, u, r)
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.send(hr)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// GetFile copies the file at path inside the VM to w and returns its mode.
func (c *Client) GetFile(ctx context.Context, id, path string, w io.Writer) (uint32, error) {
	u := c.base + "/api/v1/vms/" + url.PathEscape(id) + "/files?path=" + url.QueryEscape(path)
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.send(hr)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return 0, fmt.Errorf("download %s: %w", path, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return 0, fmt.Errorf("download %s: got %d of %d bytes", path, n, resp.ContentLength)
	}
	mode, _ := strconv.ParseUint(resp.Header.Get("X-File-Mode"), 8, 32)
	return uint32(mode), nil
}

// Logs copies a VM's console log (service "") or one service's log to w,
// following it when follow is set until ctx ends.
func (c *Client) Logs(ctx context.Context, id, service string, follow bool, w io.Writer) error {
	q := url.Values{}
	if service != "" {
		q.Set("service", service)
	}
	if follow {
		q.Set("follow", "1")
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/api/v1/vms/"+url.PathEscape(id)+"/logs?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := c.send(hr)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if ctx.Err() != nil {
		return nil
	}
	return err
}
