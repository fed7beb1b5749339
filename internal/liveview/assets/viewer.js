// The live-view page. Two transports: WebRTC (video encoded on the daemon,
// input on a data channel), tried first when the daemon offers it, and
// noVNC on a websocket, used when WebRTC does not show a frame within a
// few seconds, when it fails later, or when the user switches to it. The
// daemon enforces view-only mode itself; the flag here only keeps the page
// from sending input it would drop anyway.
import RFB from '../novnc/core/rfb.js';
import { startWebRTC } from './webrtc.js';

const body = document.body;
const statusEl = document.getElementById('status');
const reconnectBtn = document.getElementById('reconnect');
const screen = document.getElementById('screen');
const viewOnly = body.dataset.viewOnly === 'true';
const query = new URLSearchParams(location.search);
const token = query.get('token') || '';
const transportEl = document.getElementById('transport');
const switchBtn = document.getElementById('switch');
const webrtcOffered = body.dataset.webrtc === 'true';
// ice=relay restricts WebRTC to TURN relays (tests; networks where only the
// relay works); webrtc_timeout is how long WebRTC gets to show a frame.
const relayOnly = query.get('ice') === 'relay';
const webrtcTimeout = Number(query.get('webrtc_timeout')) || 5000;
const PREF_KEY = 'hangar.liveview.transport';

// Close code the daemon sends when the login session is over.
const CLOSE_SESSION_ENDED = 4000;
const MAX_RETRIES = 5;

let rfb = null;
let rtc = null;
let retries = 0;
let fallbacks = 0;
let lastFallback = '';

function preferred() {
  if (!webrtcOffered) return 'vnc';
  const q = query.get('transport');
  if (q === 'vnc' || q === 'webrtc') return q;
  try { return localStorage.getItem(PREF_KEY) || 'webrtc'; } catch { return 'webrtc'; }
}

function setTransport(t) {
  body.dataset.transport = t;
  transportEl.textContent = t === 'webrtc' ? 'WebRTC' : 'VNC';
  switchBtn.hidden = !webrtcOffered;
  switchBtn.textContent = t === 'webrtc' ? 'Use VNC' : 'Use WebRTC';
}

function rtcURL() {
  return wsURL().replace(/\/ws\?/, '/webrtc?');
}

async function start() {
  if (preferred() !== 'webrtc') { connect(); return; }
  setTransport('webrtc');
  setState('connecting', 'Connecting (WebRTC)…');
  const s = startWebRTC({
    screen, url: rtcURL(), viewOnly, relayOnly, timeoutMs: webrtcTimeout,
    onLost: (why) => fallBack(why),
    onEnded: () => setState('ended', 'The login session has ended.'),
  });
  rtc = s.view;
  try {
    await s.ready;
    setState('connected', viewOnly ? 'Connected (view only)' : 'Connected');
  } catch (e) {
    fallBack(e.message);
  }
}

// fallBack leaves WebRTC for noVNC for the rest of this page's life.
function fallBack(why) {
  if (rtc) { rtc.close(); rtc = null; }
  fallbacks++;
  lastFallback = why;
  connect();
}

function stopAll() {
  if (rtc) { rtc.close(); rtc = null; }
  if (rfb) { const r = rfb; rfb = null; r.disconnect(); }
  screen.replaceChildren();
}

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
  setTransport('vnc');
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
  const mine = rfb;
  rfb.addEventListener('disconnect', () => {
    if (rfb !== mine) return; // switched away on purpose
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

reconnectBtn.addEventListener('click', () => { retries = 0; start(); });
switchBtn.addEventListener('click', () => {
  const next = body.dataset.transport === 'webrtc' ? 'vnc' : 'webrtc';
  try { localStorage.setItem(PREF_KEY, next); } catch { /* private mode */ }
  stopAll();
  retries = 0;
  if (next === 'webrtc') start(); else connect();
});
window.addEventListener('focus', () => { if (rfb) rfb.focus(); });
// Expose the clients for tests and debugging (no secrets on them).
window.hangarLiveView = {
  get rfb() { return rfb; },
  get rtc() { return rtc; },
  get state() { return body.dataset.state; },
  get transport() { return body.dataset.transport; },
  get fallbacks() { return fallbacks; },
  get lastFallback() { return lastFallback; },
};
start();
