package agent

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/hangar-vm/hangar/internal/agentlink/proto"
)

// File access never follows a symlink and never accepts "..": every path
// component is opened with openat2(RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH)
// relative to the previous one, so a symlink planted anywhere on the path
// (by the guest's user, say) cannot redirect a write of credentials. Paths
// through symlinks (e.g. /var/run) must be given by their real location.
const resolveFlags = unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_BENEATH | unix.RESOLVE_NO_MAGICLINKS

// pathError carries the HTTP status and code for a refused path.
type pathError struct {
	status int
	code   string
	msg    string
}

func (e *pathError) Error() string { return e.msg }

// splitPath validates an absolute path and returns its components.
func splitPath(p string) ([]string, error) {
	if !strings.HasPrefix(p, "/") {
		return nil, &pathError{http.StatusBadRequest, proto.CodeBadRequest, "path must be absolute"}
	}
	if strings.ContainsRune(p, 0) {
		return nil, &pathError{http.StatusBadRequest, proto.CodeBadRequest, "path contains a NUL byte"}
	}
	var comps []string
	for _, c := range strings.Split(p, "/") {
		switch c {
		case "", ".":
			continue
		case "..":
			return nil, &pathError{http.StatusForbidden, proto.CodeForbidden, "path must not contain .. components"}
		}
		comps = append(comps, c)
	}
	if len(comps) == 0 {
		return nil, &pathError{http.StatusBadRequest, proto.CodeBadRequest, "path names the root directory"}
	}
	return comps, nil
}

// mapErrno turns a syscall error on component name into a pathError.
func mapErrno(err error, name string) error {
	switch {
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		return &pathError{http.StatusForbidden, proto.CodeForbidden, fmt.Sprintf("%q is a symlink; symlinks are not followed", name)}
	case errors.Is(err, unix.ENOENT):
		return &pathError{http.StatusNotFound, proto.CodeNotFound, fmt.Sprintf("%q does not exist", name)}
	case errors.Is(err, unix.ENOTDIR):
		return &pathError{http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("%q is not a directory", name)}
	case errors.Is(err, unix.EISDIR):
		return &pathError{http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("%q is a directory", name)}
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EDQUOT):
		return &pathError{http.StatusInsufficientStorage, proto.CodeNoSpace, fmt.Sprintf("%q: no space left on the device", name)}
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return &pathError{http.StatusForbidden, proto.CodeForbidden, fmt.Sprintf("%q: permission denied", name)}
	}
	return fmt.Errorf("%s: %w", name, err)
}

// openDir opens the directory dirs (components from /) without following
// symlinks, creating missing ones (mode 0755, owned by uid:gid when uid >= 0)
// when mkdir is set. The caller closes the returned fd.
func openDir(dirs []string, mkdir bool, uid, gid int) (int, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /: %w", err)
	}
	for _, c := range dirs {
		how := &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: resolveFlags}
		nfd, err := unix.Openat2(fd, c, how)
		if errors.Is(err, unix.ENOENT) && mkdir {
			if err := unix.Mkdirat(fd, c, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
				unix.Close(fd)
				return -1, mapErrno(err, c)
			}
			if uid >= 0 {
				_ = unix.Fchownat(fd, c, uid, gid, unix.AT_SYMLINK_NOFOLLOW)
			}
			nfd, err = unix.Openat2(fd, c, how)
		}
		unix.Close(fd)
		if err != nil {
			return -1, mapErrno(err, c)
		}
		fd = nfd
	}
	return fd, nil
}

func writePathError(w http.ResponseWriter, err error) {
	var pe *pathError
	if errors.As(err, &pe) {
		writeError(w, pe.status, pe.code, pe.msg)
		return
	}
	writeError(w, http.StatusInternalServerError, proto.CodeInternal, err.Error())
}

func queryInt(q string, def int) (int, error) {
	if q == "" {
		return def, nil
	}
	return strconv.Atoi(q)
}

// handlePutFile writes the body atomically: a temporary file in the same
// directory, fsync, chmod/chown, rename over the target, fsync the directory.
func (a *Agent) handlePutFile(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	comps, err := splitPath(q.Get(proto.QueryPath))
	if err != nil {
		writePathError(w, err)
		return
	}
	mode := uint64(0o644)
	if m := q.Get(proto.QueryMode); m != "" {
		if mode, err = strconv.ParseUint(m, 8, 32); err != nil || mode > 0o7777 {
			writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "mode must be octal, at most 7777")
			return
		}
	}
	uid, err1 := queryInt(q.Get(proto.QueryUID), -1)
	gid, err2 := queryInt(q.Get(proto.QueryGID), -1)
	if err1 != nil || err2 != nil {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "uid and gid must be numbers")
		return
	}
	if r.ContentLength > a.cfg.MaxFileBytes {
		writeError(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("file exceeds the limit of %d bytes", a.cfg.MaxFileBytes))
		return
	}
	dirfd, err := openDir(comps[:len(comps)-1], q.Get(proto.QueryMkdir) == "1", uid, gid)
	if err != nil {
		writePathError(w, err)
		return
	}
	defer unix.Close(dirfd)
	name := comps[len(comps)-1]
	var st unix.Stat_t
	if err := unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
		writePathError(w, mapErrno(unix.EISDIR, name))
		return
	}
	rb := make([]byte, 6)
	_, _ = rand.Read(rb)
	tmp := "." + name + ".hangar-" + hex.EncodeToString(rb)
	if len(tmp) > 255 {
		tmp = ".hangar-" + hex.EncodeToString(rb)
	}
	fd, err := unix.Openat(dirfd, tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		writePathError(w, mapErrno(err, tmp))
		return
	}
	f := os.NewFile(uintptr(fd), tmp)
	committed := false
	defer func() {
		f.Close()
		if !committed {
			_ = unix.Unlinkat(dirfd, tmp, 0)
		}
	}()
	fw := &fileWriter{f: f}
	n, err := io.Copy(fw, io.LimitReader(r.Body, a.cfg.MaxFileBytes+1))
	if fw.err != nil {
		// The disk, not the request, failed (ENOSPC is its own answer).
		writePathError(w, mapErrno(fw.err, name))
		return
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "read body: "+err.Error())
		return
	}
	if n > a.cfg.MaxFileBytes {
		writeError(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("file exceeds the limit of %d bytes", a.cfg.MaxFileBytes))
		return
	}
	if uid >= 0 || gid >= 0 {
		if err := f.Chown(uid, gid); err != nil {
			writePathError(w, mapErrno(err, name))
			return
		}
	}
	// Chmod after chown: chown clears set-id bits.
	if err := f.Chmod(os.FileMode(mode&0o777) | setidBits(mode)); err != nil {
		writePathError(w, mapErrno(err, name))
		return
	}
	if err := f.Sync(); err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			writePathError(w, mapErrno(err, name))
			return
		}
		writeError(w, http.StatusInternalServerError, proto.CodeInternal, "fsync: "+err.Error())
		return
	}
	if err := unix.Renameat(dirfd, tmp, dirfd, name); err != nil {
		writePathError(w, mapErrno(err, name))
		return
	}
	committed = true
	if dfd, err := unix.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		_ = unix.Fsync(dfd)
		unix.Close(dfd)
	}
	var fst unix.Stat_t
	_ = unix.Fstat(int(f.Fd()), &fst)
	writeJSON(w, http.StatusOK, proto.FileStat{Path: "/" + strings.Join(comps, "/"), Size: n, Mode: fst.Mode & 0o7777, UID: int(fst.Uid), GID: int(fst.Gid)})
}

// fileWriter remembers a write error so it is not taken for a failure to
// read the request body.
type fileWriter struct {
	f   *os.File
	err error
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		w.err = err
	}
	return n, err
}

func setidBits(mode uint64) os.FileMode {
	var m os.FileMode
	if mode&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if mode&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if mode&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m
}

// handleGetFile streams a regular file; size and owner come in headers.
func (a *Agent) handleGetFile(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	comps, err := splitPath(q.Get(proto.QueryPath))
	if err != nil {
		writePathError(w, err)
		return
	}
	limit := a.cfg.MaxFileBytes
	if m := q.Get(proto.QueryMax); m != "" {
		v, err := strconv.ParseInt(m, 10, 64)
		if err != nil || v < 0 {
			writeError(w, http.StatusBadRequest, proto.CodeBadRequest, "max must be a byte count")
			return
		}
		limit = min(limit, v)
	}
	dirfd, err := openDir(comps[:len(comps)-1], false, -1, -1)
	if err != nil {
		writePathError(w, err)
		return
	}
	defer unix.Close(dirfd)
	name := comps[len(comps)-1]
	// O_NONBLOCK: opening a FIFO must not hang; non-regular files are refused below.
	fd, err := unix.Openat2(dirfd, name, &unix.OpenHow{Flags: unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK | unix.O_CLOEXEC, Resolve: resolveFlags})
	if err != nil {
		writePathError(w, mapErrno(err, name))
		return
	}
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		writeError(w, http.StatusInternalServerError, proto.CodeInternal, "stat: "+err.Error())
		return
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		writeError(w, http.StatusBadRequest, proto.CodeBadRequest, fmt.Sprintf("%q is not a regular file", name))
		return
	}
	if st.Size > limit {
		writeError(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("file of %d bytes exceeds the limit of %d bytes", st.Size, limit))
		return
	}
	var body io.Reader = io.LimitReader(f, st.Size)
	if st.Size == 0 {
		// Files under /proc and /sys report size 0 but have content:
		// read them to EOF, within the limit, to learn their length
		// before the answer starts.
		b, err := io.ReadAll(io.LimitReader(f, limit+1))
		if err != nil {
			writeError(w, http.StatusInternalServerError, proto.CodeInternal, "read: "+err.Error())
			return
		}
		if int64(len(b)) > limit {
			writeError(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, fmt.Sprintf("file exceeds the limit of %d bytes", limit))
			return
		}
		st.Size = int64(len(b))
		body = bytes.NewReader(b)
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(st.Size, 10))
	w.Header().Set(proto.HeaderMode, strconv.FormatUint(uint64(st.Mode&0o7777), 8))
	w.Header().Set(proto.HeaderUID, strconv.Itoa(int(st.Uid)))
	w.Header().Set(proto.HeaderGID, strconv.Itoa(int(st.Gid)))
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, body)
}
