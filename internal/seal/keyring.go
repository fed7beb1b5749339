package seal

import (
	"bytes"
	"context"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// KeyFileName is the keyring file in the data directory.
const KeyFileName = "seal.keys"

// Environment variables that supply the keyring instead of the file.
const (
	EnvKey        = "HANGAR_SEAL_KEY"
	EnvKeyVersion = "HANGAR_SEAL_KEY_VERSION"
	EnvOldKeys    = "HANGAR_SEAL_OLD_KEYS"
)

// keyFileFormat is the "format" field this code writes and reads.
const keyFileFormat = 1

// ErrEnvKeyring is returned by Rotate when the keys come from the
// environment, which hangar cannot rewrite.
var ErrEnvKeyring = errors.New("the seal keys come from " + EnvKey +
	": deploy a new " + EnvKey + " with a higher " + EnvKeyVersion + ", move the old key into " + EnvOldKeys +
	", then run hangar keys rotate to re-seal the records")

// Keyring holds the versioned key-encryption keys. It is safe for
// concurrent use. A file-backed keyring notices when another process (the
// `hangar keys rotate` command beside a running daemon) rewrote the file and
// reloads it, so both agree on the current key.
type Keyring struct {
	path    string // key file; "" for keys from the environment or memory
	source  string // human description for `hangar keys ls`
	fromEnv bool   // keys from HANGAR_SEAL_KEY: Rotate is refused

	mu      sync.RWMutex // guards keys, current and stamp
	keys    map[int]*kek
	current int
	stamp   fileStamp // identity of the key file last loaded
}

type kek struct {
	aead    cipher.AEAD
	created time.Time // zero when unknown (environment keys)
}

// fileStamp identifies one version of the key file: writes replace the file
// by rename, so a new inode (or size or mtime) means new contents.
type fileStamp struct {
	ino   uint64
	size  int64
	mtime time.Time
}

// KeyInfo describes one key without its bytes.
type KeyInfo struct {
	Version   int
	Current   bool
	CreatedAt time.Time // zero when unknown
}

type keyFile struct {
	Format  int        `json:"format"`
	Current int        `json:"current"`
	Keys    []keyEntry `json:"keys"`
}

type keyEntry struct {
	Version   int       `json:"version"`
	Key       string    `json:"key"`
	CreatedAt time.Time `json:"created_at"`
}

// Open returns the keyring: from HANGAR_SEAL_KEY (and HANGAR_SEAL_OLD_KEYS)
// when lookupEnv finds it, else from <dataDir>/seal.keys, which is created
// with one random key (version 1) if it does not exist yet. lookupEnv is
// os.LookupEnv in the daemon and a map in tests; nil means os.LookupEnv.
func Open(dataDir string, lookupEnv func(string) (string, bool)) (*Keyring, error) {
	if lookupEnv == nil {
		lookupEnv = os.LookupEnv
	}
	if v, ok := lookupEnv(EnvKey); ok && v != "" {
		return openEnv(v, lookupEnv)
	}
	if dataDir == "" {
		return nil, errors.New("open seal keyring: no data directory and no " + EnvKey)
	}
	k := &Keyring{path: filepath.Join(dataDir, KeyFileName)}
	k.source = "file " + k.path
	if err := os.MkdirAll(dataDir, 0o750); err != nil {
		return nil, fmt.Errorf("open seal keyring: create data dir: %w", err)
	}
	if err := k.loadOrCreate(); err != nil {
		return nil, fmt.Errorf("open seal keyring: %w", err)
	}
	return k, nil
}

// FromKeys builds an in-memory keyring from raw keys by version, with
// current as the sealing key. Tests and tools use it; it is never persisted.
func FromKeys(keys map[int][]byte, current int) (*Keyring, error) {
	k := &Keyring{source: "memory", keys: map[int]*kek{}}
	for v, b := range keys {
		if v < 1 {
			return nil, fmt.Errorf("key version %d: want 1 or more", v)
		}
		a, err := newAEAD(b)
		if err != nil {
			return nil, fmt.Errorf("key version %d: %w", v, err)
		}
		k.keys[v] = &kek{aead: a}
	}
	if k.keys[current] == nil {
		return nil, fmt.Errorf("current key version %d is not among the keys", current)
	}
	k.current = current
	return k, nil
}

func openEnv(raw string, lookupEnv func(string) (string, bool)) (*Keyring, error) {
	version := 1
	if v, ok := lookupEnv(EnvKeyVersion); ok && v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s must be a positive integer", EnvKeyVersion)
		}
		version = n
	}
	k := &Keyring{source: "environment " + EnvKey, fromEnv: true, keys: map[int]*kek{}, current: version}
	a, err := aeadFromBase64(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvKey, err)
	}
	k.keys[version] = &kek{aead: a}
	if old, ok := lookupEnv(EnvOldKeys); ok && strings.TrimSpace(old) != "" {
		for i, item := range strings.Split(old, ",") {
			vs, b64, found := strings.Cut(strings.TrimSpace(item), ":")
			n, err := strconv.Atoi(vs)
			if !found || err != nil || n < 1 {
				// Item number only: the item itself holds key bytes.
				return nil, fmt.Errorf("%s item %d: want version:base64key", EnvOldKeys, i+1)
			}
			if k.keys[n] != nil {
				return nil, fmt.Errorf("%s item %d: key version %d given twice", EnvOldKeys, i+1, n)
			}
			a, err := aeadFromBase64(b64)
			if err != nil {
				return nil, fmt.Errorf("%s item %d (version %d): %w", EnvOldKeys, i+1, n, err)
			}
			k.keys[n] = &kek{aead: a}
		}
	}
	return k, nil
}

// aeadFromBase64 decodes a base64 key. Its errors name the length at most:
// the base64 package's own errors only give an offset, but they are not
// wrapped anyway so that no future change can leak key material.
func aeadFromBase64(s string) (cipher.AEAD, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		b, err = base64.RawStdEncoding.DecodeString(strings.TrimSpace(s))
	}
	if err != nil {
		return nil, errors.New("not valid base64")
	}
	if len(b) != KeySize {
		return nil, fmt.Errorf("key is %d bytes, want %d (base64 of 32 random bytes, e.g. head -c32 /dev/urandom | base64)", len(b), KeySize)
	}
	return newAEAD(b)
}

// Source says where the keys come from, for display.
func (k *Keyring) Source() string { return k.source }

// FromEnv reports whether the keys come from HANGAR_SEAL_KEY, in which case
// Rotate is refused and rotation means deploying a new key.
func (k *Keyring) FromEnv() bool { return k.fromEnv }

// Path is the key file, or "" when the keys do not come from a file.
func (k *Keyring) Path() string { return k.path }

// Current is the version new records are sealed with.
func (k *Keyring) Current() int {
	_ = k.refresh()
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.current
}

// Keys lists the key versions, oldest first, without key bytes.
func (k *Keyring) Keys() []KeyInfo {
	_ = k.refresh()
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make([]KeyInfo, 0, len(k.keys))
	for v, kk := range k.keys {
		out = append(out, KeyInfo{Version: v, Current: v == k.current, CreatedAt: kk.created})
	}
	slices.SortFunc(out, func(a, b KeyInfo) int { return a.Version - b.Version })
	return out
}

// Seal encrypts plaintext with the current key, bound to ad.
func (k *Keyring) Seal(plaintext []byte, ad AD) (Sealed, error) {
	// A rotation by another process must take effect here, or records
	// written after it would stay on the old key.
	if err := k.refresh(); err != nil {
		return Sealed{}, fmt.Errorf("seal %s: %w", ad, err)
	}
	k.mu.RLock()
	v, kk := k.current, k.keys[k.current]
	k.mu.RUnlock()
	return sealWith(kk.aead, v, plaintext, ad)
}

// Open decrypts s, which must have been sealed for exactly ad. Any change
// to the record, or a record of another user, provider or version, yields
// an error wrapping ErrAuth and no plaintext.
func (k *Keyring) Open(s Sealed, ad AD) ([]byte, error) {
	kk := k.key(s.KeyVersion)
	if kk == nil {
		// Maybe another process rotated and this record is already newer.
		if err := k.refresh(); err != nil {
			return nil, fmt.Errorf("open %s: %w", ad, err)
		}
		if kk = k.key(s.KeyVersion); kk == nil {
			return nil, fmt.Errorf("open %s: key version %d: %w", ad, s.KeyVersion, ErrUnknownKey)
		}
	}
	return openWith(kk.aead, s, ad)
}

func (k *Keyring) key(v int) *kek {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.keys[v]
}

// Rotate adds a new random key to the key file and makes it current; the
// old keys stay so that records sealed with them still open. It waits for a
// concurrent rotation by another process to finish first. Records are
// re-sealed by RotateAll.
func (k *Keyring) Rotate(ctx context.Context) (int, error) {
	if k.path == "" {
		if k.fromEnv {
			return 0, ErrEnvKeyring
		}
		return 0, errors.New("rotate: an in-memory keyring cannot rotate")
	}
	unlock, err := lockFile(ctx, k.path+".lock")
	if err != nil {
		return 0, fmt.Errorf("rotate: %w", err)
	}
	defer unlock()
	f, _, err := readKeyFile(k.path)
	if err != nil {
		return 0, fmt.Errorf("rotate: %w", err)
	}
	next := 0
	for _, e := range f.Keys {
		next = max(next, e.Version)
	}
	next++
	key, err := newKey()
	if err != nil {
		return 0, fmt.Errorf("rotate: %w", err)
	}
	f.Keys = append(f.Keys, keyEntry{Version: next, Key: base64.StdEncoding.EncodeToString(key), CreatedAt: time.Now().UTC().Truncate(time.Second)})
	f.Current = next
	if err := writeKeyFile(k.path, f, true); err != nil {
		return 0, fmt.Errorf("rotate: %w", err)
	}
	if err := k.reload(); err != nil {
		return 0, fmt.Errorf("rotate: %w", err)
	}
	return next, nil
}

// loadOrCreate loads the key file, creating it with one key if missing.
// The lock makes two first starts agree on one key.
func (k *Keyring) loadOrCreate() error {
	if _, err := os.Stat(k.path); err == nil {
		return k.reload()
	}
	unlock, err := lockFile(context.Background(), k.path+".lock")
	if err != nil {
		return err
	}
	defer unlock()
	if _, err := os.Stat(k.path); errors.Is(err, fs.ErrNotExist) {
		key, err := newKey()
		if err != nil {
			return err
		}
		f := keyFile{Format: keyFileFormat, Current: 1, Keys: []keyEntry{{
			Version: 1, Key: base64.StdEncoding.EncodeToString(key), CreatedAt: time.Now().UTC().Truncate(time.Second),
		}}}
		if err := writeKeyFile(k.path, f, false); err != nil {
			return err
		}
	}
	return k.reload()
}

// refresh reloads a file-backed keyring if the file changed since the last
// load. A stat per call is cheap next to the store round trip around it.
func (k *Keyring) refresh() error {
	if k.path == "" {
		return nil
	}
	st, err := stampOf(k.path)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	k.mu.RLock()
	same := st == k.stamp
	k.mu.RUnlock()
	if same {
		return nil
	}
	return k.reload()
}

func (k *Keyring) reload() error {
	f, st, err := readKeyFile(k.path)
	if err != nil {
		return err
	}
	keys := make(map[int]*kek, len(f.Keys))
	for _, e := range f.Keys {
		a, err := aeadFromBase64(e.Key)
		if err != nil {
			return fmt.Errorf("key file %s: key version %d: %w", k.path, e.Version, err)
		}
		keys[e.Version] = &kek{aead: a, created: e.CreatedAt}
	}
	k.mu.Lock()
	k.keys, k.current, k.stamp = keys, f.Current, st
	k.mu.Unlock()
	return nil
}

func newKey() ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return key, nil
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}

// readKeyFile reads and validates the key file. Its errors never quote the
// file's contents: a JSON syntax error is reported by offset only.
func readKeyFile(path string) (keyFile, fileStamp, error) {
	var f keyFile
	fh, err := os.Open(path)
	if err != nil {
		return f, fileStamp{}, fmt.Errorf("open key file: %w", err)
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return f, fileStamp{}, fmt.Errorf("stat key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return f, fileStamp{}, fmt.Errorf("key file %s has mode %04o: group and others must have no access (chmod 600 it)", path, fi.Mode().Perm())
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
		// A key file another account owns could have been planted (or be
		// rewritten) by that account: the keys would not be the daemon's.
		if int(sys.Uid) != os.Geteuid() {
			return f, fileStamp{}, fmt.Errorf("key file %s is owned by uid %d, not by the daemon's user (uid %d): chown it", path, sys.Uid, os.Geteuid())
		}
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(fh); err != nil {
		return f, fileStamp{}, fmt.Errorf("read key file: %w", err)
	}
	dec := json.NewDecoder(&buf)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		var syn *json.SyntaxError
		if errors.As(err, &syn) {
			return f, fileStamp{}, fmt.Errorf("key file %s: malformed JSON at byte %d", path, syn.Offset)
		}
		var typ *json.UnmarshalTypeError
		if errors.As(err, &typ) {
			return f, fileStamp{}, fmt.Errorf("key file %s: field %q has the wrong type", path, typ.Field)
		}
		return f, fileStamp{}, fmt.Errorf("key file %s: not a hangar key file (want {\"format\":1,\"current\":N,\"keys\":[...]})", path)
	}
	if f.Format != keyFileFormat {
		return f, fileStamp{}, fmt.Errorf("key file %s: format %d, want %d", path, f.Format, keyFileFormat)
	}
	seen := map[int]bool{}
	for _, e := range f.Keys {
		if e.Version < 1 || seen[e.Version] {
			return f, fileStamp{}, fmt.Errorf("key file %s: key version %d is invalid or repeated", path, e.Version)
		}
		seen[e.Version] = true
	}
	if !seen[f.Current] {
		return f, fileStamp{}, fmt.Errorf("key file %s: current version %d has no key", path, f.Current)
	}
	return f, st, nil
}

// writeKeyFile writes f atomically with mode 0600. With replace false it
// never overwrites an existing file (link fails instead), so a first start
// cannot clobber keys another process just created.
func writeKeyFile(path string, f keyFile, replace bool) error {
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("encode key file: %w", err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, ".seal.keys-*") // mode 0600
	if err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if _, err := tmp.Write(b); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	if replace {
		err = os.Rename(tmp.Name(), path)
	} else {
		err = os.Link(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("install key file: %w", err)
	}
	// The rename must survive a crash, or a re-sealed record could outlive
	// the key that opens it.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// lockFile takes an exclusive flock on path, polling until ctx ends.
func lockFile(ctx context.Context, path string) (func(), error) {
	fh, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	for {
		err := unix.Flock(int(fh.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(fh.Fd()), unix.LOCK_UN)
				_ = fh.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			_ = fh.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = fh.Close()
			return nil, fmt.Errorf("wait for lock %s: %w", path, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
