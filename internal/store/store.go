// Package store persists hangar's state: users, API keys, VMs, login
// sessions, sealed credentials, the durable task queue and the event log.
//
// One SQL implementation serves both dialects (SQLite, embedded, the default;
// Postgres in production). Every not-found and conflict error is mapped in
// one place (errors.go) to ErrNotFound and ErrConflict, so callers test with
// errors.Is and never look at driver error codes.
package store

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors every Store method maps driver errors onto.
var (
	// ErrNotFound means the addressed record does not exist (or is not
	// visible to the caller that asked for it).
	ErrNotFound = errors.New("not found")
	// ErrConflict means a uniqueness constraint refused the write, or a
	// compare-and-swap found a newer version than the one the writer read.
	ErrConflict = errors.New("conflict")
)

// Roles a user can have.
const (
	RoleAdmin = "admin"
	RoleUser  = "user"
)

// User is an account. Every other resource belongs to one.
type User struct {
	ID        string
	Name      string
	Role      string
	CreatedAt time.Time
}

// Scope is the owner id that bounds what u may see: "" (everyone's) for
// an admin, u's own id otherwise. Every owner-scoped lookup takes it.
func (u User) Scope() string {
	if u.Role == RoleAdmin {
		return ""
	}
	return u.ID
}

// APIKey is a bearer key. Only the SHA-256 hash of the key is stored; the
// key itself is shown once, when it is created.
type APIKey struct {
	ID        string
	UserID    string
	Hash      string // hex SHA-256 of the full key
	Prefix    string // first characters of the key, safe to show
	CreatedAt time.Time
	Name      string    // the owner's label ("laptop", "ci"); may be empty
	ExpiresAt time.Time // zero: never; after it the key no longer authenticates
}

// Event is one entry in the append-only event log. IDs increase
// monotonically, so SSE clients resume with Last-Event-ID.
type Event struct {
	ID        int64
	UserID    string // owner; empty for system events (visible to admins only)
	Type      string // e.g. "user_created", "vm_ready"
	Subject   string // id of the resource the event is about
	Data      []byte // JSON object, never secrets
	CreatedAt time.Time
}

// EventFilter selects events. An empty UserID selects every user's events.
type EventFilter struct {
	UserID  string
	AfterID int64
	Limit   int
}

// Task states of the durable queue.
const (
	TaskPending = "pending"
	TaskRunning = "running"
	TaskDone    = "done"
	TaskDead    = "dead"
)

// Task is a durable unit of background work (VM cleanup, destruction,
// hibernation). A claimed task carries a lease; if the process that claimed
// it dies, the task becomes claimable again when the lease expires.
type Task struct {
	ID          int64
	Kind        string
	Payload     []byte // JSON
	State       string
	Attempts    int // attempts started so far (incremented on claim)
	MaxAttempts int
	RunAt       time.Time
	LeaseOwner  string
	LeaseUntil  time.Time
	LastError   string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// VM is the stored record of a virtual machine. Later migrations add columns;
// Spec and Runtime hold JSON documents owned by the VM manager.
type VM struct {
	ID        string
	OwnerID   string
	Kind      string // base | cli | browser
	State     string
	LastError string
	Spec      []byte // JSON: vcpus, memory, image id...
	Runtime   []byte // JSON: pid, sockets, boot phases, to re-attach after restart
	CreatedAt time.Time
	UpdatedAt time.Time
	// Version counts writes (1 when created). UpdateVM writes only over
	// the version the caller read.
	Version int64
}

// Login session states. The login package owns the transitions; the store
// only keeps the current one.
const (
	AuthPending   = "pending"   // VM starting, CLI login not yet begun
	AuthWaiting   = "waiting"   // the user is completing the login in the live view
	AuthSucceeded = "succeeded" // credential captured and sealed
	AuthFailed    = "failed"
	AuthCancelled = "cancelled"
	AuthExpired   = "expired"
)

// AuthSession is one browser-login attempt: a throwaway VM that drives a
// provider's CLI login for its owner. Error never holds secrets.
type AuthSession struct {
	ID         string
	OwnerID    string
	Provider   string // codex | claude | gemini | dev
	Mode       string // browser (live view); later e.g. device-code
	State      string
	Error      string
	VMID       string // the login VM while it exists; "" once destroyed
	CreatedAt  time.Time
	UpdatedAt  time.Time
	ExpiresAt  time.Time // zero: no deadline
	FinishedAt time.Time // zero while the session is live
	// Details is a JSON object the login manager owns (OAuth URL, device
	// code, phase timings); never a token.
	Details []byte
	// Version counts writes (1 when created). UpdateAuthSession writes
	// only over the version the caller read.
	Version int64
}

// NetworkPolicy is an admin's egress policy for one user, replacing the
// per-kind defaults for all their VMs. It is not a credential: the user
// cannot read its secret part or delete it. The upstream proxy URL may
// hold a password, so it is sealed like a credential (Nonce, Ciphertext,
// KeyVersion; empty Ciphertext: no proxy) and only ProxyHost is shown.
type NetworkPolicy struct {
	UserID     string
	Mode       string   // none | full | allow
	Allow      []string // CIDRs and domains when Mode is allow
	ProxyHost  string   // scheme://host[:port] of the upstream proxy, never its credentials
	Version    int64    // 1 for the first write, +1 on each rewrite; bound into the seal
	KeyVersion int
	Nonce      []byte
	Ciphertext []byte
	UpdatedAt  time.Time
}

// Credential is a user's sealed credential for one provider. The store
// never sees plaintext: Nonce and Ciphertext come from the seal package,
// which binds OwnerID, Provider and Version into the AEAD additional data.
type Credential struct {
	ID          string
	OwnerID     string
	Provider    string
	Version     int64 // record version; 1 for the first write, +1 on each rewrite
	KeyVersion  int   // which key-encryption key sealed it
	Nonce       []byte
	Ciphertext  []byte
	Metadata    []byte // JSON: account email, plan, file list... never secrets
	CapturedAt  time.Time
	ValidatedAt time.Time // zero: never validated
	UpdatedAt   time.Time
}

// Store is everything hangar persists. All methods take a context first and
// return ErrNotFound / ErrConflict (wrapped) where those apply.
type Store interface {
	// Dialect is "sqlite" or "postgres".
	Dialect() string
	Ping(ctx context.Context) error
	Close() error

	CreateUser(ctx context.Context, u User) error
	GetUser(ctx context.Context, id string) (User, error)
	GetUserByName(ctx context.Context, name string) (User, error)
	ListUsers(ctx context.Context) ([]User, error)
	// DeleteUser removes the user and, by cascade, everything they own.
	DeleteUser(ctx context.Context, id string) error
	CountUsers(ctx context.Context) (int, error)

	CreateAPIKey(ctx context.Context, k APIKey) error
	// LookupAPIKey finds the key by its hash and returns its user. An
	// expired key is ErrNotFound, like an unknown one.
	LookupAPIKey(ctx context.Context, hash string) (APIKey, User, error)
	// ListAPIKeys lists userID's keys (expired ones included), oldest
	// first.
	ListAPIKeys(ctx context.Context, userID string) ([]APIKey, error)
	// DeleteAPIKey revokes key id of userID ("" : any user's, admins).
	DeleteAPIKey(ctx context.Context, id, userID string) error

	AppendEvent(ctx context.Context, e Event) (Event, error)
	ListEvents(ctx context.Context, f EventFilter) ([]Event, error)
	// LastEventID is the id of the newest event, 0 when there is none.
	LastEventID(ctx context.Context) (int64, error)

	CreateVM(ctx context.Context, v VM) error
	// CreateVMChecked creates v only if check, given every VM not
	// destroyed, returns nil; check's error is returned as is. No other
	// CreateVMChecked runs between the read and the insert, in this process
	// or another on the same database, so a quota check cannot be raced.
	CreateVMChecked(ctx context.Context, v VM, check func(existing []VM) error) error
	// GetVM returns the VM; ownerID "" means any owner (admin).
	GetVM(ctx context.Context, id, ownerID string) (VM, error)
	// ListVMs lists VMs of ownerID, or of everyone when ownerID is "".
	ListVMs(ctx context.Context, ownerID string) ([]VM, error)
	// UpdateVM writes Kind, State, LastError, Spec and Runtime of v.ID and
	// sets UpdatedAt to now, only if the stored version is still v.Version
	// (compare-and-swap): ErrConflict when another write came first,
	// ErrNotFound when there is no such VM. On success the stored version
	// is v.Version+1.
	UpdateVM(ctx context.Context, v VM) error
	// TransferVM gives the VM owned by fromOwner to toOwner with a new
	// Spec, or fails with ErrNotFound when fromOwner no longer owns it
	// (a warm-pool VM is taken by one login only).
	TransferVM(ctx context.Context, id, fromOwner, toOwner string, spec []byte) error
	DeleteVM(ctx context.Context, id string) error

	// EnqueueTask stores a pending task. Zero RunAt means now; zero
	// MaxAttempts means the queue default.
	EnqueueTask(ctx context.Context, t Task) (Task, error)
	// ClaimTask atomically takes the oldest due task (pending with RunAt <=
	// now, or running with an expired lease) for owner, holding it for lease.
	// ok is false when nothing is due.
	ClaimTask(ctx context.Context, owner string, lease time.Duration) (t Task, ok bool, err error)
	// CompleteTask marks a task done; it fails with ErrNotFound if owner no
	// longer holds the lease.
	CompleteTask(ctx context.Context, id int64, owner string) error
	// FailTask records an error. A zero retryAt marks the task dead at
	// once (a permanent failure). Otherwise the task is retried at retryAt, or is marked
	// dead once it has used MaxAttempts. It fails with ErrNotFound if owner
	// no longer holds the lease.
	FailTask(ctx context.Context, id int64, owner, errMsg string, retryAt time.Time) (Task, error)
	// ExtendLease moves the lease of a task owner still holds to now+lease,
	// for work that runs longer than one lease. ErrNotFound means the lease
	// was lost (another owner reclaimed the task, or it finished).
	ExtendLease(ctx context.Context, id int64, owner string, lease time.Duration) error
	GetTask(ctx context.Context, id int64) (Task, error)
	ListTasks(ctx context.Context, state string) ([]Task, error)
	// DeleteFinishedTasks removes done and dead tasks last updated before
	// before, so the queue table does not grow forever. It returns how many
	// it removed.
	DeleteFinishedTasks(ctx context.Context, before time.Time) (int64, error)
	// DeleteEventsBefore removes events created before before and returns
	// how many it removed. Ids are never reused, so SSE resumption stays
	// correct (a client that was further behind just misses pruned events).
	DeleteEventsBefore(ctx context.Context, before time.Time) (int64, error)

	CreateAuthSession(ctx context.Context, a AuthSession) error
	// GetAuthSession returns the session; ownerID "" means any owner.
	GetAuthSession(ctx context.Context, id, ownerID string) (AuthSession, error)
	// ListAuthSessions lists ownerID's sessions, or everyone's for "",
	// oldest first.
	ListAuthSessions(ctx context.Context, ownerID string) ([]AuthSession, error)
	// UpdateAuthSession writes State, Error, VMID, ExpiresAt, FinishedAt
	// and Details and sets UpdatedAt to now, only if the stored version is
	// still a.Version (compare-and-swap, as UpdateVM). On success the
	// stored version is a.Version+1.
	UpdateAuthSession(ctx context.Context, a AuthSession) error

	// PutCredential stores a sealed credential with optimistic concurrency:
	// c.Version 1 creates the record (ErrConflict if one exists); c.Version
	// n > 1 replaces version n-1 (ErrConflict if the stored version is not
	// n-1, ErrNotFound if there is none). It returns the stored record.
	PutCredential(ctx context.Context, c Credential) (Credential, error)
	GetCredential(ctx context.Context, ownerID, provider string) (Credential, error)
	// ListCredentials lists ownerID's credentials, or all for "" (key
	// rotation walks them all).
	ListCredentials(ctx context.Context, ownerID string) ([]Credential, error)
	// MarkCredentialValidated records a successful validation without
	// touching the sealed data or its version.
	MarkCredentialValidated(ctx context.Context, ownerID, provider string, at time.Time) error
	DeleteCredential(ctx context.Context, ownerID, provider string) error

	// CreatePrompt stores a new prompt.
	CreatePrompt(ctx context.Context, p Prompt) error
	// GetPrompt returns the prompt; ownerID "" means any owner.
	GetPrompt(ctx context.Context, id, ownerID string) (Prompt, error)
	// ListPrompts lists prompts newest first.
	ListPrompts(ctx context.Context, f PromptFilter) ([]Prompt, error)
	// UpdatePrompt writes VMID, State, ExitCode, Error, Usage, StartedAt and
	// FinishedAt of p.ID only while the stored state is fromState
	// (ErrConflict otherwise), so a transition cannot overwrite a later one.
	UpdatePrompt(ctx context.Context, p Prompt, fromState string) error
	// AppendPromptEvent numbers e after the prompt's last event and stores it.
	AppendPromptEvent(ctx context.Context, e PromptEvent) (PromptEvent, error)
	// ListPromptEvents returns a prompt's events after afterSeq, in order.
	ListPromptEvents(ctx context.Context, promptID string, afterSeq int64, limit int) ([]PromptEvent, error)

	// AcquireLease gives l.VMID the lease of l.OwnerID's l.Provider
	// credential until l.ExpiresAt when it is free, expired or already
	// held by that VM. When another VM holds it, it returns that lease
	// with ErrConflict.
	AcquireLease(ctx context.Context, l Lease) (Lease, error)
	// RenewLease extends a lease vmID holds (ErrNotFound if it does not).
	RenewLease(ctx context.Context, ownerID, provider, vmID string, until time.Time) error
	// ReleaseLease ends a lease vmID holds (ErrNotFound if it does not).
	ReleaseLease(ctx context.Context, ownerID, provider, vmID string) error
	GetLease(ctx context.Context, ownerID, provider string) (Lease, error)
	// ListLeases lists ownerID's leases, or all for "".
	ListLeases(ctx context.Context, ownerID string) ([]Lease, error)
	// PutNetworkPolicy stores a user's network policy with the same
	// optimistic concurrency as PutCredential: p.Version 1 creates it
	// (ErrConflict if one exists), n > 1 replaces version n-1.
	PutNetworkPolicy(ctx context.Context, p NetworkPolicy) (NetworkPolicy, error)
	GetNetworkPolicy(ctx context.Context, userID string) (NetworkPolicy, error)
	// ListNetworkPolicies lists every user's policy (key rotation, admins).
	ListNetworkPolicies(ctx context.Context) ([]NetworkPolicy, error)
	DeleteNetworkPolicy(ctx context.Context, userID string) error
}
