// The dashboard: sign in with an API key, see your VMs and connected
// providers, connect a provider through a browser VM's live view. Everything
// it shows comes from the API; events say when to look again.

import { ApiError, Client, EventStream } from "/assets/api.js";
import { el, fmtDuration, fmtTime, firstLine } from "/assets/ui.js";

const KEY_STORAGE = "hangar.apiKey";
const SESSION_STORAGE = "hangar.authSession";
// The session is polled every second while the event stream is down, and
// every 5 s as a safety net while it is live (events carry the changes; the
// API's per-key rate limit is about one request a second).
const SESSION_POLL_MS = 1000;
const SESSION_POLL_LIVE_MS = 5000;
const HEARTBEAT_MS = 30000;
const FALLBACK_POLL_MS = 10000;

const TERMINAL = new Set(["completed", "failed", "timeout", "cancelled"]);
const STEPS = ["starting", "vm_ready", "awaiting_user", "capturing", "completed"];
const STATE_LABELS = {
  starting: "Starting a browser VM…",
  vm_ready: "Browser VM ready, opening the sign-in page…",
  awaiting_user: "Waiting for you to sign in below",
  capturing: "Signed in, saving credentials…",
  completed: "Connected",
  failed: "Failed",
  timeout: "Timed out",
  cancelled: "Cancelled",
};
const PROVIDER_NAMES = { codex: "Codex", claude: "Claude Code", gemini: "Gemini CLI", dev: "dev" };

const $ = (sel) => document.querySelector(sel);

/** app is the page's whole state. */
const app = {
  client: null,
  me: null,
  stream: null,
  streamState: "off",
  signedInAt: 0,
  session: null, // the open api.AuthSession, if any
  sessionTimers: [],
  vmRefresh: null, // pending debounced VM refresh
  providersRefresh: null, // pending debounced providers refresh
  lastSessionPoll: 0,
  fallbackTimer: null,
  noticeTimer: null,
  prompt: null, // the running prompt: {id, abort}
};

// ---- sign in / out ----------------------------------------------------------

async function signIn(key, { restoring = false } = {}) {
  const client = new Client(key);
  const button = $("#sign-in");
  let me;
  button.disabled = true;
  try {
    me = await client.me();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
      showSignInError(restoring ? "Your saved key is no longer valid. Sign in again." : "That key is not valid.");
    } else {
      showSignInError(err.message);
    }
    return;
  } finally {
    button.disabled = false;
  }
  if (app.stream) app.stream.stop();
  clearInterval(app.fallbackTimer);
  app.client = client;
  app.me = me;
  app.signedInAt = Date.now();
  sessionStorage.setItem(KEY_STORAGE, key);
  $("#api-key").value = "";
  $("#sign-in-error").hidden = true;
  $("#signin-view").hidden = true;
  $("#app-view").hidden = false;
  $("#whoami").textContent = `${me.name} (${me.role})`;
  $("#whoami").hidden = false;
  $("#sign-out").hidden = false;

  app.stream = new EventStream(client, {
    onEvent,
    onStatus: setStreamState,
    onUnauthorized: () => signOut("Your key is no longer valid. Sign in again."),
  });
  app.stream.start();
  // Without live events, look again now and then.
  app.fallbackTimer = setInterval(() => {
    if (app.streamState !== "live") refreshVMs();
  }, FALLBACK_POLL_MS);

  await Promise.all([refreshVMs(), refreshProviders()]);
  const open = sessionStorage.getItem(SESSION_STORAGE);
  if (open) resumeSession(open);
}

function signOut(message = "") {
  if (app.session && !TERMINAL.has(app.session.state) && app.client) {
    // Best effort: nobody will watch this login any more.
    app.client.cancelSession(app.session.id).catch(() => {});
  }
  closeSession();
  if (app.stream) app.stream.stop();
  clearInterval(app.fallbackTimer);
  app.client = null;
  app.me = null;
  app.stream = null;
  sessionStorage.removeItem(KEY_STORAGE);
  $("#vms").replaceChildren();
  $("#providers").replaceChildren();
  $("#app-view").hidden = true;
  $("#whoami").hidden = true;
  $("#sign-out").hidden = true;
  $("#signin-view").hidden = false;
  setStreamState("off");
  if (message) showSignInError(message);
  $("#api-key").focus();
}

function showSignInError(message) {
  const p = $("#sign-in-error");
  p.textContent = message;
  p.hidden = false;
}

// call runs an API call; a refused key signs out, other errors become a
// notice. It returns undefined on error.
async function call(fn) {
  if (!app.client) return undefined;
  try {
    return await fn(app.client);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      signOut("Your key is no longer valid. Sign in again.");
    } else {
      notice(err.message, "error");
    }
    return undefined;
  }
}

function notice(message, kind = "info") {
  const p = $("#notice");
  p.textContent = message;
  p.dataset.kind = kind;
  p.hidden = false;
  clearTimeout(app.noticeTimer);
  app.noticeTimer = setTimeout(() => { p.hidden = true; }, kind === "error" ? 15000 : 6000);
}

function setStreamState(state) {
  app.streamState = state;
  const s = $("#events-status");
  s.dataset.state = state;
  s.hidden = state === "off"; // nothing to show while signed out
  s.textContent = { live: "live", connecting: "connecting…", offline: "reconnecting…", off: "offline" }[state] || state;
}

// ---- events -----------------------------------------------------------------

function onEvent(ev) {
  switch (ev.type) {
    case "vm_ready":
    case "vm_failed":
    case "vm_stopped":
    case "vm_destroyed":
      scheduleVMRefresh();
      break;
    case "auth_awaiting_user":
    case "auth_completed":
    case "auth_failed":
      if (app.session && ev.subject === app.session.id) pollSession();
      if (ev.type === "auth_completed") scheduleProvidersRefresh();
      break;
    case "user_created": {
      // The stream starts from the beginning of history; announce only
      // what happens while the page is open.
      const at = Date.parse(ev.created_at);
      if (at >= app.signedInAt - 5000) {
        const name = ev.data && ev.data.name ? ev.data.name : ev.subject;
        notice(`User ${name} was created.`);
      }
      break;
    }
  }
}

function scheduleVMRefresh() {
  // A burst of events (or the replay on connect) becomes one request.
  if (app.vmRefresh) return;
  app.vmRefresh = setTimeout(() => {
    app.vmRefresh = null;
    refreshVMs();
  }, 150);
}

function scheduleProvidersRefresh() {
  if (app.providersRefresh) return;
  app.providersRefresh = setTimeout(() => {
    app.providersRefresh = null;
    refreshProviders();
  }, 150);
}

// ---- VMs --------------------------------------------------------------------

async function refreshVMs() {
  const vms = await call((c) => c.listVMs());
  if (vms) renderVMs(vms);
}

function renderVMs(vms) {
  const body = $("#vms");
  const focused = document.activeElement && body.contains(document.activeElement)
    ? [document.activeElement.closest("tr")?.dataset.vmId, document.activeElement.dataset.action] : null;
  const live = vms.filter((v) => v.state !== "destroyed")
    .sort((a, b) => Date.parse(b.created_at) - Date.parse(a.created_at));
  if (live.length === 0) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "7" }, "No VMs yet. Create one with New VM.")));
    return;
  }
  body.replaceChildren(...live.map(vmRow));
  if (focused) body.querySelector(`tr[data-vm-id="${CSS.escape(focused[0] || "")}"] [data-action="${focused[1]}"]`)?.focus();
}

function vmRow(v) {
  const phases = v.boot_phases;
  const boot = phases && phases.total_ms
    ? el("span", { title: `spawn ${phases.spawn_ms} ms, kernel ${phases.kernel_ms} ms, agent ${phases.agent_up_ms} ms, services ${phases.services_ready_ms} ms` }, fmtDuration(phases.total_ms))
    : "";
  const actions = el("td", { class: "actions" });
  if (["creating", "booting", "ready"].includes(v.state)) {
    actions.append(el("button", { type: "button", "data-action": "stop", "aria-label": `Stop VM ${v.id}`, onclick: () => vmAction(v, "stop") }, "Stop"));
  }
  if (["stopped", "failed"].includes(v.state)) {
    actions.append(el("button", { type: "button", "data-action": "start", "aria-label": `Start VM ${v.id}`, onclick: () => vmAction(v, "start") }, "Start"));
  }
  actions.append(el("button", { type: "button", class: "danger", "data-action": "delete", "aria-label": `Delete VM ${v.id}`, onclick: () => vmAction(v, "delete") }, "Delete"));
  return el("tr", { "data-vm-id": v.id },
    el("td", { title: v.id }, el("code", {}, v.id)),
    el("td", {}, v.kind),
    el("td", {}, el("span", { class: `state state-${v.state}`, "data-state": v.state }, v.state)),
    el("td", {}, boot),
    el("td", { class: "err", title: v.last_error || "" }, firstLine(v.last_error)),
    el("td", { title: v.created_at }, fmtTime(v.created_at)),
    actions);
}

async function vmAction(v, action) {
  const questions = {
    stop: `Stop VM ${v.id}? Its disk is kept; Start boots it again.`,
    start: null,
    delete: `Delete VM ${v.id}? This destroys it and its disk.`,
  };
  if (questions[action] && !(await confirmDialog(questions[action]))) return;
  const done = await call((c) => ({ stop: c.stopVM, start: c.startVM, delete: c.deleteVM })[action].call(c, v.id).then(() => true));
  if (done) refreshVMs();
}

async function createVM(ev) {
  ev.preventDefault();
  const button = $("#new-vm");
  const kind = $("#new-vm-kind").value;
  button.disabled = true;
  try {
    const vm = await call((c) => c.createVM(kind));
    if (vm) notice(`VM ${vm.id} (${vm.kind}) is being created.`);
    await refreshVMs();
  } finally {
    button.disabled = false;
  }
}

function confirmDialog(text) {
  const d = $("#confirm");
  $("#confirm-text").textContent = text;
  d.returnValue = "";
  d.showModal();
  $("#confirm-no").focus();
  return new Promise((resolve) => {
    d.addEventListener("close", () => resolve(d.returnValue === "yes"), { once: true });
  });
}

// ---- providers --------------------------------------------------------------

async function refreshProviders() {
  if (!app.client) return;
  let creds;
  try {
    creds = await app.client.listCredentials();
  } catch (err) {
    if (err instanceof ApiError && err.status === 404 && err.message.startsWith("no route")) {
      $("#providers").replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "7" }, "This server does not store provider credentials yet.")));
      return;
    }
    if (err instanceof ApiError && err.status === 401) {
      signOut("Your key is no longer valid. Sign in again.");
      return;
    }
    notice(err.message, "error");
    return;
  }
  renderProviders(creds || []);
}

function renderProviders(creds) {
  renderPromptProviders(creds);
  const body = $("#providers");
  if (creds.length === 0) {
    body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: "7" }, "No providers connected yet.")));
    return;
  }
  body.replaceChildren(...creds.map((c) => el("tr", { "data-provider": c.provider },
    el("td", {}, el("strong", {}, PROVIDER_NAMES[c.provider] || c.provider)),
    el("td", {}, c.account || ""),
    el("td", {}, c.plan || ""),
    el("td", { title: c.expires_at || "" }, c.expires_at ? fmtTime(c.expires_at) : ""),
    el("td", { title: c.captured_at }, fmtTime(c.captured_at)),
    el("td", { title: c.validated_at || "" }, c.validated_at ? fmtTime(c.validated_at) : "not yet"),
    el("td", { class: "actions" }, el("button", {
      type: "button", class: "danger", "data-action": "disconnect", "aria-label": `Disconnect ${c.provider}`,
      onclick: () => disconnect(c.provider),
    }, "Disconnect")))));
}

async function disconnect(provider) {
  const name = PROVIDER_NAMES[provider] || provider;
  if (!(await confirmDialog(`Disconnect ${name}? Its stored credentials are deleted; your VMs lose access to it.`))) return;
  const ok = await call((c) => c.deleteCredential(provider).then(() => true));
  if (ok) notice(`${name} disconnected.`);
  refreshProviders();
}

// ---- login sessions ---------------------------------------------------------

async function connect(provider) {
  if (app.session && !TERMINAL.has(app.session.state)) {
    notice("Finish or cancel the login in progress first.", "error");
    $("#session-panel").scrollIntoView({ block: "nearest" });
    return;
  }
  let s;
  setConnectEnabled(false);
  try {
    s = await app.client.createSession(provider);
  } catch (err) {
    setConnectEnabled(true);
    if (err instanceof ApiError && err.status === 404 && err.message.startsWith("no route")) {
      notice("Logins are not available on this server yet.", "error");
    } else if (err instanceof ApiError && err.status === 401) {
      signOut("Your key is no longer valid. Sign in again.");
    } else {
      notice(err.message, "error");
    }
    return;
  }
  openSession(s);
}

async function resumeSession(id) {
  try {
    const s = await app.client.getSession(id);
    if (TERMINAL.has(s.state)) {
      sessionStorage.removeItem(SESSION_STORAGE);
      return;
    }
    openSession(s);
  } catch {
    sessionStorage.removeItem(SESSION_STORAGE);
  }
}

function openSession(s) {
  closeSession();
  app.session = s;
  sessionStorage.setItem(SESSION_STORAGE, s.id);
  $("#session-panel").hidden = false;
  renderSession();
  if (!TERMINAL.has(s.state)) {
    // Events drive the panel; the poll is the fallback when they lag or
    // the stream is down.
    app.sessionTimers.push(setInterval(() => {
      const every = app.streamState === "live" ? SESSION_POLL_LIVE_MS : SESSION_POLL_MS;
      if (Date.now() - app.lastSessionPoll >= every - 100) pollSession();
    }, SESSION_POLL_MS));
    app.sessionTimers.push(setInterval(heartbeat, HEARTBEAT_MS));
  }
}

function stopSessionTimers() {
  app.sessionTimers.forEach(clearInterval);
  app.sessionTimers = [];
}

function setConnectEnabled(on) {
  for (const b of document.querySelectorAll(".connect button")) b.disabled = !on;
}

function closeSession() {
  stopSessionTimers();
  setConnectEnabled(true);
  app.session = null;
  sessionStorage.removeItem(SESSION_STORAGE);
  $("#session-panel").hidden = true;
  $("#live-view-box .screen").replaceChildren();
  $("#live-view-box").hidden = true;
}

let polling = false;
async function pollSession() {
  const s = app.session;
  if (!s || polling) return;
  polling = true;
  app.lastSessionPoll = Date.now();
  try {
    const fresh = await app.client.getSession(s.id);
    if (app.session && app.session.id === fresh.id) updateSession(fresh);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) signOut("Your key is no longer valid. Sign in again.");
    else if (err instanceof ApiError && err.status === 404) {
      updateSession({ ...s, state: "failed", error: "This login no longer exists on the server." });
    }
    // Other errors: the next poll tries again.
  } finally {
    polling = false;
  }
}

async function heartbeat() {
  const s = app.session;
  if (!s || TERMINAL.has(s.state)) return;
  try {
    await app.client.heartbeat(s.id);
  } catch {
    // The poll reports what matters (the session ended or the key is gone).
  }
}

function updateSession(s) {
  const was = app.session ? app.session.state : "";
  app.session = s;
  renderSession();
  if (TERMINAL.has(s.state)) {
    stopSessionTimers();
    sessionStorage.removeItem(SESSION_STORAGE);
    if (s.state === "completed" && was !== "completed") {
      notice(`${PROVIDER_NAMES[s.provider] || s.provider} is connected.`);
      refreshProviders();
    }
  }
}

function renderSession() {
  const s = app.session;
  if (!s) return;
  const terminal = TERMINAL.has(s.state);
  $("#session-title").textContent = `Connecting ${PROVIDER_NAMES[s.provider] || s.provider}`;
  const st = $("#session-state");
  st.textContent = STATE_LABELS[s.state] || s.state;
  st.dataset.state = s.state;
  st.className = `state session-${s.state}`;

  const reached = STEPS.indexOf(s.state);
  for (const li of document.querySelectorAll("#session-steps li")) {
    const i = STEPS.indexOf(li.dataset.step);
    li.className = reached < 0 ? "" : i < reached ? "done" : i === reached ? (terminal ? "done" : "current") : "";
    if (i === reached && !terminal) li.setAttribute("aria-current", "step");
    else li.removeAttribute("aria-current");
  }

  const err = $("#session-error");
  const message = s.error || (s.state === "timeout" ? "Nobody finished the login in time. Start again when you are ready." : "");
  err.textContent = message;
  err.hidden = !(terminal && s.state !== "completed" && message);

  $("#session-cancel").hidden = terminal;
  setConnectEnabled(terminal);
  $("#session-close").hidden = !terminal;

  const box = $("#live-view-box");
  const screen = box.querySelector(".screen");
  if (s.live_view_url && !terminal) {
    let frame = $("#live-view");
    if (!frame) {
      frame = el("iframe", { id: "live-view", title: "Browser in the login VM (live view)" });
      screen.replaceChildren(frame);
    }
    // Every answer carries a freshly issued token, so compare paths: setting
    // src again would reload the live view and drop its connection.
    const current = frame.getAttribute("src");
    if (!current || new URL(current, location.href).pathname !== new URL(s.live_view_url, location.href).pathname) {
      frame.setAttribute("src", s.live_view_url);
    }
    box.hidden = false;
  } else {
    screen.replaceChildren();
    box.hidden = true;
  }
}

async function cancelSession() {
  const s = app.session;
  if (!s) return;
  const button = $("#session-cancel");
  button.disabled = true;
  try {
    await call((c) => c.cancelSession(s.id));
    await pollSession();
  } finally {
    button.disabled = false;
  }
}

// ---- prompts ----------------------------------------------------------------

/** renderPromptProviders offers the connected providers in the prompt box. */
function renderPromptProviders(creds) {
  const sel = $("#prompt-provider");
  const current = sel.value;
  sel.replaceChildren(...creds.map((c) => el("option", { value: c.provider }, PROVIDER_NAMES[c.provider] || c.provider)));
  if (creds.some((c) => c.provider === current)) sel.value = current;
  $("#prompt-panel").hidden = creds.length === 0;
}

function setPromptState(state) {
  const s = $("#prompt-state");
  s.textContent = state;
  s.dataset.state = state;
}

async function runPrompt(ev) {
  ev.preventDefault();
  if (app.prompt) return;
  const provider = $("#prompt-provider").value;
  const text = $("#prompt-text").value.trim();
  if (!provider || !text) {
    notice("Pick a connected provider and write a prompt.", "error");
    return;
  }
  $("#prompt-output").textContent = "";
  $("#prompt-tools").replaceChildren();
  $("#prompt-error").hidden = true;
  setPromptState("queued");
  const p = await call((c) => c.createPrompt(provider, text));
  if (!p) {
    setPromptState("");
    return;
  }
  const abort = new AbortController();
  app.prompt = { id: p.id, abort };
  $("#prompt-run").disabled = true;
  $("#prompt-cancel").hidden = false;
  try {
    await app.client.followPrompt(p.id, (e) => {
      switch (e.type) {
        case "started": setPromptState("running"); break;
        case "output": $("#prompt-output").textContent += e.data.text || ""; break;
        case "tool":
          $("#prompt-tools").append(el("li", {}, `tool ${e.data.phase}: ${e.data.name}`));
          break;
        case "completed": setPromptState("completed"); break;
        case "failed":
          setPromptState("failed");
          $("#prompt-error").textContent = e.data.message || "The prompt failed.";
          $("#prompt-error").hidden = false;
          break;
      }
    }, abort.signal);
  } catch (err) {
    notice(err.message, "error");
  } finally {
    app.prompt = null;
    $("#prompt-run").disabled = false;
    $("#prompt-cancel").hidden = true;
  }
}

async function cancelPrompt() {
  if (!app.prompt) return;
  await call((c) => c.cancelPrompt(app.prompt.id));
}

// ---- wiring -----------------------------------------------------------------

function main() {
  $("#signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const key = $("#api-key").value.trim();
    if (!key) {
      showSignInError("Enter your API key.");
      return;
    }
    signIn(key);
  });
  $("#sign-out").addEventListener("click", () => signOut());
  $("#new-vm-form").addEventListener("submit", createVM);
  for (const b of document.querySelectorAll(".connect button")) {
    b.addEventListener("click", () => connect(b.dataset.provider));
  }
  $("#session-cancel").addEventListener("click", cancelSession);
  $("#prompt-form").addEventListener("submit", runPrompt);
  $("#prompt-cancel").addEventListener("click", cancelPrompt);
  $("#session-close").addEventListener("click", closeSession);

  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) signIn(saved, { restoring: true });
  else $("#api-key").focus();
}

main();
