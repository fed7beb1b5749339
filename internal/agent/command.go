package agent

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// buildCmd prepares argv to run as username (the agent's own user when
// empty) with the default environment plus env, in dir (the user's home,
// else /, when empty). It does not set stdio or process-group attributes.
func buildCmd(argv []string, env map[string]string, dir, username string) (*exec.Cmd, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("empty argv")
	}
	base := map[string]string{"PATH": defaultPath, "LANG": "C.UTF-8"}
	attr := &syscall.SysProcAttr{}
	if username != "" {
		u, err := user.Lookup(username)
		if err != nil {
			return nil, fmt.Errorf("look up user %q: %w", username, err)
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("user %q has a non-numeric uid or gid", username)
		}
		var groups []uint32
		if ids, err := u.GroupIds(); err == nil {
			for _, g := range ids {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					groups = append(groups, uint32(n))
				}
			}
		}
		cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
		if uint32(uid) != uint32(os.Getuid()) || uint32(gid) != uint32(os.Getgid()) {
			attr.Credential = cred
		}
		base["HOME"], base["USER"], base["LOGNAME"] = u.HomeDir, u.Username, u.Username
		if dir == "" {
			// Accounts like nobody have a home that does not exist; the
			// chdir would fail the start with a misleading ENOENT.
			if fi, err := os.Stat(u.HomeDir); err == nil && fi.IsDir() {
				dir = u.HomeDir
			}
		}
	} else if u, err := user.Current(); err == nil {
		base["HOME"], base["USER"], base["LOGNAME"] = u.HomeDir, u.Username, u.Username
	}
	for k, v := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") || strings.Contains(v, "\x00") {
			return nil, fmt.Errorf("invalid environment variable %q", k)
		}
		base[k] = v
	}
	if dir == "" {
		dir = "/"
	}
	path, err := lookPath(argv[0], base["PATH"])
	if err != nil {
		return nil, err
	}
	cmd := &exec.Cmd{Path: path, Args: argv, Dir: dir, SysProcAttr: attr}
	keys := make([]string, 0, len(base))
	for k := range base {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		cmd.Env = append(cmd.Env, k+"="+base[k])
	}
	return cmd, nil
}

// lookPath resolves file against the child's PATH (not the agent's).
func lookPath(file, path string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("executable %q not found in PATH", file)
}
