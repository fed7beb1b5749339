// Package prompt runs users' prompts: one provider CLI run, non-interactive,
// in the user's CLI workspace VM, with the CLI's machine-readable output
// parsed (package cliout) into common events that are stored, numbered and
// streamed to the user as server-sent events with resume.
//
// A prompt's life: the API call picks the VM (the one named, else the
// user's first CLI workspace, created or started on first use) and answers
// 201 at once, as queued. A runner waits for the VM, takes the provider's
// prompt slot and credential lease (package creds: one prompt per user and
// provider at a time, and the credential follows it from VM to VM), runs the
// recipe's command through the agent with the prompt's timeout, and streams
// events: started, output, tool, usage, then exactly one completed or
// failed. After the CLI exits the credential files are read back, so a token
// the CLI refreshed is re-sealed before anything else can use it.
//
// Every state change is guarded by the state it leaves (store.UpdatePrompt),
// so a cancel racing the natural end cannot write over it. A prompt the
// daemon was running when it died is failed at the next start, with its
// output so far kept: its CLI process died with the agent stream.
//
// Output is redacted before it is stored: every token-like value of the
// credential files the VM holds is replaced, so a CLI that echoes a token
// cannot leak it into events, records or logs.
package prompt
