// The hangar API as the dashboard uses it: JSON requests with the API key,
// and the server-sent event stream read through fetch (EventSource cannot
// send an Authorization header).

/** An error answer of the API: {"error":{"code","message"}} and its status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** Client calls the API with one key. */
export class Client {
  constructor(key) {
    this.key = key;
  }

  headers(extra = {}) {
    return { Authorization: "Bearer " + this.key, ...extra };
  }

  /** request sends method path [body] and returns the decoded JSON (or null). */
  async request(method, path, body) {
    const init = { method, headers: this.headers(), cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "network", "hangar cannot be reached: " + err.message);
    }
    const text = await resp.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = null;
      }
    }
    if (!resp.ok) {
      const e = data && data.error ? data.error : {};
      throw new ApiError(resp.status, e.code || "http_" + resp.status, e.message || resp.status + " " + resp.statusText);
    }
    return data;
  }

  me() { return this.request("GET", "/api/v1/me"); }
  listVMs() { return this.request("GET", "/api/v1/vms"); }
  createVM(kind) { return this.request("POST", "/api/v1/vms", { kind }); }
  stopVM(id) { return this.request("POST", `/api/v1/vms/${enc(id)}/stop`); }
  startVM(id) { return this.request("POST", `/api/v1/vms/${enc(id)}/start`); }
  deleteVM(id) { return this.request("DELETE", `/api/v1/vms/${enc(id)}`); }
  listCredentials() { return this.request("GET", "/api/v1/credentials"); }
  deleteCredential(provider) { return this.request("DELETE", `/api/v1/credentials/${enc(provider)}`); }
  createSession(provider) { return this.request("POST", "/api/v1/auth/sessions", { provider, mode: "browser" }); }
  getSession(id) { return this.request("GET", `/api/v1/auth/sessions/${enc(id)}`); }
  cancelSession(id) { return this.request("POST", `/api/v1/auth/sessions/${enc(id)}/cancel`); }
  heartbeat(id) { return this.request("POST", `/api/v1/auth/sessions/${enc(id)}/heartbeat`); }
  createPrompt(provider, prompt) { return this.request("POST", "/api/v1/prompts", { provider, prompt }); }
  cancelPrompt(id) { return this.request("POST", `/api/v1/prompts/${enc(id)}/cancel`); }

  /**
   * followPrompt streams a prompt's events (GET /api/v1/prompts/{id}/events)
   * to onEvent({seq,type,data}) until the final completed or failed event,
   * resuming after a dropped stream from the last event seen, so each event
   * arrives exactly once.
   */
  async followPrompt(id, onEvent, signal) {
    let last = 0;
    for (let attempt = 0; attempt < 20; attempt++) {
      const headers = this.headers({ Accept: "text/event-stream" });
      if (last) headers["Last-Event-ID"] = String(last);
      let resp;
      try {
        resp = await fetch(`/api/v1/prompts/${enc(id)}/events`, { headers, signal, cache: "no-store" });
      } catch (err) {
        if (signal && signal.aborted) return;
        await sleep(500);
        continue;
      }
      if (!resp.ok) {
        let msg = resp.status + " " + resp.statusText;
        try { msg = (await resp.json()).error.message || msg; } catch { /* keep the status */ }
        throw new ApiError(resp.status, "prompt_events", msg);
      }
      const parser = new SSEParser();
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const ev of parser.push(value)) {
            const seq = Number(ev.id);
            if (!(seq > last)) continue;
            last = seq;
            let data = {};
            try { data = JSON.parse(ev.data); } catch { /* keep {} */ }
            onEvent({ seq, type: ev.type, data });
            if (ev.type === "completed" || ev.type === "failed") return;
          }
        }
      } catch (err) {
        if (signal && signal.aborted) return;
      }
      await sleep(500);
    }
    throw new ApiError(0, "prompt_events", "the prompt's event stream kept breaking");
  }
}

function enc(s) {
  return encodeURIComponent(s);
}

/**
 * SSEParser turns text/event-stream text, fed in arbitrary chunks, into
 * events as the HTML standard's parsing rules say: lines end in CRLF, LF or
 * CR; "field: value" with one optional space; data lines joined by "\n";
 * comments start with ":"; a blank line dispatches.
 */
export class SSEParser {
  constructor() {
    this.buf = "";
    this.lastId = "";
    this.reset();
  }

  reset() {
    this.type = "";
    this.data = [];
    this.hasData = false;
  }

  /** push feeds text and returns the events it completed: {id,type,data}. */
  push(text) {
    this.buf += text;
    const out = [];
    for (;;) {
      const m = /\r\n|\n|\r/.exec(this.buf);
      if (!m) break;
      // A CR at the very end may be the first half of a CRLF split across
      // chunks; wait for the next chunk to tell.
      if (m[0] === "\r" && m.index === this.buf.length - 1) break;
      const line = this.buf.slice(0, m.index);
      this.buf = this.buf.slice(m.index + m[0].length);
      const ev = this.line(line);
      if (ev) out.push(ev);
    }
    return out;
  }

  line(line) {
    if (line === "") {
      if (!this.hasData) {
        this.reset();
        return null;
      }
      const ev = { id: this.lastId, type: this.type || "message", data: this.data.join("\n") };
      this.reset();
      return ev;
    }
    if (line.startsWith(":")) return null;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? "" : line.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "event": this.type = value; break;
      case "data": this.data.push(value); this.hasData = true; break;
      case "id": if (!value.includes("\0")) this.lastId = value; break;
      case "retry": if (/^\d+$/.test(value)) this.retry = Number(value); break;
    }
    return null;
  }
}

/**
 * EventStream follows GET /api/v1/events and calls onEvent(api.Event) for
 * each event, reconnecting with Last-Event-ID after a drop. onStatus gets
 * "connecting", "live" or "offline"; onUnauthorized is called (and the
 * stream stops) when the key is refused.
 */
export class EventStream {
  constructor(client, { onEvent, onStatus = () => {}, onUnauthorized = () => {} }) {
    this.client = client;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.onUnauthorized = onUnauthorized;
    this.lastId = "";
    this.abort = null;
    this.stopped = true;
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.loop();
  }

  stop() {
    this.stopped = true;
    if (this.abort) this.abort.abort();
    this.onStatus("offline");
  }

  async loop() {
    let delay = 500;
    while (!this.stopped) {
      this.onStatus("connecting");
      const parser = new SSEParser();
      parser.lastId = this.lastId;
      try {
        await this.once(parser, () => { delay = 500; });
      } catch (err) {
        if (this.stopped) return;
        if (err instanceof ApiError && err.status === 401) {
          this.stopped = true;
          this.onStatus("offline");
          this.onUnauthorized(err);
          return;
        }
      }
      if (this.stopped) return;
      this.onStatus("offline");
      await sleep(parser.retry || delay);
      delay = Math.min(delay * 2, 15000);
    }
  }

  async once(parser, connected) {
    this.abort = new AbortController();
    const headers = this.client.headers({ Accept: "text/event-stream" });
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    const resp = await fetch("/api/v1/events", { headers, signal: this.abort.signal, cache: "no-store" });
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try { msg = (await resp.json()).error.message || msg; } catch { /* keep the status */ }
      throw new ApiError(resp.status, "events", msg);
    }
    connected();
    this.onStatus("live");
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const ev of parser.push(value)) {
        this.lastId = ev.id;
        let data;
        try {
          data = JSON.parse(ev.data);
        } catch {
          continue; // not an api.Event; nothing to act on
        }
        try {
          this.onEvent(data);
        } catch (err) {
          console.error("event handler failed", err);
        }
      }
    }
  }
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
