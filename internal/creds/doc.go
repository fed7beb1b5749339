// Package creds puts users' sealed provider credentials to use in their CLI
// VMs, and keeps the store holding the newest tokens.
//
// The CLIs hangar hosts rotate refresh tokens: every refresh spends the old
// refresh token, and presenting a spent one makes the provider revoke the
// whole grant (codex does this; the dev provider copies it). The system
// hangar replaces let two VMs refresh one token family and wrote files into
// live disks at the wrong paths. Three rules prevent both here:
//
//   - One writer. A credential is leased to at most one VM at a time (a row
//     in the store per user and provider, renewed while the VM runs,
//     expiring if the daemon dies). Only the lease holder gets the files.
//     The lease follows use: a prompt for another VM of the same user takes
//     it over once no prompt of that provider runs on the holder — the
//     holder's files are synced back and removed first. While one does run
//     there, the new prompt waits a bounded time (Config.LeaseWait) and is
//     then refused with a conflict naming the holder. Prompts of one user
//     and provider therefore run one at a time, which also keeps two CLI
//     processes on one VM from refreshing the same token at once.
//   - Through the agent only. Files are written by the agent (temporary
//     file, fsync, rename), mode 0600, owned by the CLI user, in parent
//     directories of mode 0700; never by mounting a disk.
//   - Sync back. After each prompt, periodically, and before the VM stops
//     or goes, the files are read back. When they differ from what was
//     delivered and still form a valid credential, they are sealed as the
//     next record version by compare-and-swap on the version that was
//     delivered, so a stale copy never overwrites a newer login. A record
//     that moved on meanwhile (a new login) wins, and is delivered instead.
//
// After a daemon restart the manager does not remember what it delivered;
// a VM that still holds the lease is taken to hold files derived from the
// stored version (it was the only writer), so changed files are synced
// back as the next version.
package creds
