// The WebRTC transport of the live view: video encoded on the daemon from
// the VM's screen, input back over a data channel. The daemon enforces
// view-only mode; the page only avoids sending what would be dropped.
import { getKeysym, getKeycode } from '../novnc/core/input/util.js';

// start connects and resolves once the first frame is on screen; it
// rejects when that does not happen within timeoutMs, or when the daemon
// says to use noVNC. onLost is called if a connected view fails later
// (the encoder died, ICE failed for good). The returned object's close()
// ends the view; fallback(reason) ends it telling the daemon why.
export function startWebRTC({ screen, url, viewOnly, relayOnly, timeoutMs, onLost, onEnded }) {
  let pc = null;
  let dc = null;
  let video = null;
  let done = false;
  let connected = false;
  let restarted = false;
  const ws = new WebSocket(url);
  const pending = [];
  const send = (m) => { if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m)); };

  const view = {
    get pc() { return pc; },
    get video() { return video; },
    get dc() { return dc; },
    close() {
      done = true;
      if (pc) pc.close();
      ws.close();
      if (video) video.remove();
    },
    fallback(reason) {
      send({ type: 'fallback', reason });
      view.close();
    },
  };

  const ready = new Promise((resolve, reject) => {
    const fail = (why) => {
      if (done) return;
      if (connected) { view.close(); onLost(why); return; }
      view.fallback(why);
      reject(new Error(why));
    };
    const timer = setTimeout(() => fail('no video within ' + timeoutMs + ' ms'), timeoutMs);

    ws.addEventListener('close', (e) => {
      if (done) return;
      clearTimeout(timer);
      if (e.code === 4000) { done = true; view.close(); onEnded(); return; }
      fail(e.reason || 'signalling closed');
    });
    ws.addEventListener('message', async (e) => {
      let m;
      try { m = JSON.parse(e.data); } catch { return; }
      switch (m.type) {
        case 'hello':
          await setup(m);
          break;
        case 'answer':
          await pc.setRemoteDescription({ type: 'answer', sdp: m.sdp });
          for (const c of pending.splice(0)) await pc.addIceCandidate(c).catch(() => {});
          break;
        case 'candidate':
          if (pc.remoteDescription) await pc.addIceCandidate(m.candidate).catch(() => {});
          else pending.push(m.candidate);
          break;
        case 'fallback':
          clearTimeout(timer);
          fail(m.reason || 'the daemon asked for VNC');
          break;
      }
    });

    async function setup(hello) {
      pc = new RTCPeerConnection({
        iceServers: hello.iceServers || [],
        iceTransportPolicy: relayOnly ? 'relay' : 'all',
      });
      pc.addTransceiver('video', { direction: 'recvonly' });
      dc = pc.createDataChannel('input', { ordered: true });
      pc.addEventListener('icecandidate', (ev) => {
        if (ev.candidate) send({ type: 'candidate', candidate: ev.candidate.toJSON() });
      });
      pc.addEventListener('negotiationneeded', async () => {
        // The first offer, and again after restartIce().
        await pc.setLocalDescription(await pc.createOffer());
        send({ type: 'offer', sdp: pc.localDescription.sdp });
      });
      pc.addEventListener('connectionstatechange', () => {
        if (pc.connectionState === 'failed') {
          if (!restarted) { restarted = true; pc.restartIce(); return; }
          fail('connection failed');
        }
      });
      pc.addEventListener('track', (ev) => {
        // Frames come only when the screen changes, so there is no steady
        // stream for a jitter buffer to smooth: show each one at once.
        try { ev.receiver.jitterBufferTarget = 0; } catch { /* older browsers */ }
        if ('playoutDelayHint' in ev.receiver) ev.receiver.playoutDelayHint = 0;
        video = document.createElement('video');
        video.muted = true;
        video.autoplay = true;
        video.playsInline = true;
        video.tabIndex = 0;
        video.srcObject = new MediaStream([ev.track]);
        screen.replaceChildren(video);
        const shown = () => {
          if (connected) return;
          connected = true;
          clearTimeout(timer);
          video.focus();
          resolve(view);
        };
        if ('requestVideoFrameCallback' in video) video.requestVideoFrameCallback(shown);
        else video.addEventListener('playing', shown, { once: true });
        video.play().catch(() => {});
        if (!viewOnly) wireInput(video, hello.width, hello.height);
      });
    }
  });

  function input(ev) {
    if (dc && dc.readyState === 'open') dc.send(JSON.stringify(ev));
  }

  // wireInput sends keys as X keysyms (noVNC's own mapping), the pointer
  // in remote screen pixels, and pasted text as cut text.
  function wireInput(el, w, h) {
    const down = new Map();
    el.addEventListener('keydown', (e) => {
      const sym = getKeysym(e);
      if (sym === null) return;
      e.preventDefault();
      down.set(getKeycode(e), sym);
      input({ t: 'key', down: true, keysym: sym });
    });
    el.addEventListener('keyup', (e) => {
      const code = getKeycode(e);
      const sym = down.has(code) ? down.get(code) : getKeysym(e);
      down.delete(code);
      if (sym === null) return;
      e.preventDefault();
      input({ t: 'key', down: false, keysym: sym });
    });
    el.addEventListener('blur', () => {
      for (const sym of down.values()) input({ t: 'key', down: false, keysym: sym });
      down.clear();
    });
    let buttons = 0;
    const point = (e) => {
      // The video is letterboxed (object-fit: contain).
      const r = el.getBoundingClientRect();
      const s = Math.min(r.width / w, r.height / h);
      const ox = r.left + (r.width - w * s) / 2;
      const oy = r.top + (r.height - h * s) / 2;
      const x = Math.max(0, Math.min(w - 1, Math.round((e.clientX - ox) / s)));
      const y = Math.max(0, Math.min(h - 1, Math.round((e.clientY - oy) / s)));
      return { x, y };
    };
    // DOM buttons 1,2,4 are left, right, middle; RFB's are left, middle, right.
    const mask = (b) => (b & 1) | ((b & 4) >> 1) | ((b & 2) << 1);
    for (const type of ['pointerdown', 'pointerup', 'pointermove']) {
      el.addEventListener(type, (e) => {
        if (type === 'pointerdown') el.focus();
        buttons = mask(e.buttons);
        input({ t: 'ptr', ...point(e), buttons });
        e.preventDefault();
      });
    }
    el.addEventListener('wheel', (e) => {
      e.preventDefault();
      const b = e.deltaY < 0 ? 8 : 16;
      const p = point(e);
      input({ t: 'ptr', ...p, buttons: buttons | b });
      input({ t: 'ptr', ...p, buttons });
    }, { passive: false });
    el.addEventListener('contextmenu', (e) => e.preventDefault());
    document.addEventListener('paste', (e) => {
      const text = e.clipboardData && e.clipboardData.getData('text/plain');
      if (text) input({ t: 'paste', text });
    });
  }

  return { view, ready };
}
