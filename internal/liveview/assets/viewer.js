// The live-view page: one noVNC RFB client on a websocket to this daemon.
// The daemon enforces view-only mode itself; the flag here only keeps the
// page from sending input it would drop anyway.
import RFB from '../novnc/core/rfb.js';

const body = document.body;
const statusEl = document.getElementById('status');
const reconnectBtn = document.getElementById('reconnect');
const screen = document.getElementById('screen');
const viewOnly = body.dataset.viewOnly === 'true';
const token = new URLSearchParams(location.search).get('token') || '';

// Close code the daemon sends when the login session is over.
const CLOSE_SESSION_ENDED = 4000;
const MAX_RETRIES = 5;

let rfb = null;
let retries = 0;

function setState(state, text) {
  body.dataset.state = state;
  statusEl.textContent = text;
}

function wsURL() {
  const q = new URLSearchParams({ token });
  if (viewOnly) q.set('view_only', '1');
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}${location.pathname.replace(/\/+$/, '')}/ws?${q}`;
}

function connect() {
  reconnectBtn.hidden = true;
  setState('connecting', 'Connecting…');
  let closeInfo = null;
  // The page opens the websocket itself so it can read the close code and
  // reason, which noVNC does not pass on.
  const ws = new WebSocket(wsURL(), ['binary']);
  ws.addEventListener('close', (e) => { closeInfo = { code: e.code, reason: e.reason }; });
  rfb = new RFB(screen, ws, { shared: true });
  rfb.viewOnly = viewOnly;
  rfb.scaleViewport = true;
  rfb.resizeSession = false;
  rfb.focusOnClick = true;
  rfb.background = '#111';
  rfb.addEventListener('connect', () => {
    retries = 0;
    setState('connected', viewOnly ? 'Connected (view only)' : 'Connected');
    rfb.focus();
  });
  rfb.addEventListener('desktopname', (e) => {
    if (e.detail.name) document.title = `${e.detail.name} · hangar`;
  });
  rfb.addEventListener('securityfailure', (e) => {
    setState('failed', `VNC security failure: ${e.detail.reason || e.detail.status}`);
  });
  rfb.addEventListener('disconnect', () => {
    rfb = null;
    // Let the websocket's own close event land first.
    setTimeout(() => disconnected(closeInfo), 0);
  });
}

async function disconnected(info) {
  if (info && info.code === CLOSE_SESSION_ENDED) {
    setState('ended', 'The login session has ended.');
    return;
  }
  // A refused upgrade looks like a network error to the page; asking for
  // the page again tells an expired link or a finished session apart.
  try {
    const res = await fetch(location.href, { method: 'HEAD', cache: 'no-store' });
    if (res.status === 403) {
      setState('refused', 'This live-view link is no longer valid.');
      return;
    }
    if (res.status === 410) {
      setState('ended', 'The login session has ended.');
      return;
    }
  } catch (e) {
    // The daemon is unreachable; retry below.
  }
  const why = info && info.reason ? ` (${info.reason})` : '';
  if (retries >= MAX_RETRIES) {
    setState('failed', `Disconnected${why}.`);
    reconnectBtn.hidden = false;
    return;
  }
  retries++;
  const delay = Math.min(1000 * 2 ** (retries - 1), 10000);
  setState('connecting', `Disconnected${why}; reconnecting in ${Math.round(delay / 1000)} s…`);
  setTimeout(connect, delay);
}

reconnectBtn.addEventListener('click', () => { retries = 0; connect(); });
window.addEventListener('focus', () => { if (rfb) rfb.focus(); });
// Expose the client for tests and debugging (no secrets on it).
window.hangarLiveView = { get rfb() { return rfb; }, get state() { return body.dataset.state; } };
connect();
