// Package webrtc is the live view's second transport: the login VM's
// screen as a WebRTC video track, input back on a data channel, and an
// embedded TURN server for viewers that cannot reach the daemon's UDP
// ports.
//
// # Why everything is in the daemon
//
// The system hangar replaces ran GStreamer and a WebRTC server inside the
// VM, where they crash-looped with their output in files nobody read. Here
// the guest keeps only x11vnc, which the noVNC view needs anyway, and the
// daemon does the rest on the host:
//
//	x11vnc (guest) ──RFB over the agent link──► rfb.Client.ReadUpdate
//	   (damaged rectangles only, sent only when something changed)
//	     ──► screen copy ──raw RGBA on stdin──► ffmpeg -c:v libvpx (child)
//	     ──IVF on stdout──► pion TrackLocalStaticSample ──SRTP──► browser
//	browser ──"input" data channel (JSON)──► rfb.Client Key/Pointer/CutText
//
// The encoder is a separate process (Debian's ffmpeg) rather than a cgo
// binding: the daemon stays pure Go, and the codec — the code most exposed
// to pixels a hostile guest controls — can crash without taking the
// daemon down. Such a crash is not retried: the viewer is told to fall back
// to noVNC and the login goes on, so nothing can crash-loop.
//
// # Cost follows damage
//
// An incremental RFB update request is answered only when the screen
// changes, and a frame is encoded only after an update, at most MaxFPS a
// second; a login page nobody touches costs no frames and no bytes (the
// Chromium test measures this). Sample durations follow the wall clock, so
// the browser shows each frame until the next one. The encoder runs with
// no look-ahead (one frame in, one frame out) and, since frames are rare,
// with no periodic key frames: a browser that lost the picture sends a PLI
// and gets a fresh encoder (whose first frame is a key frame), at most once
// a second. A large change in the bandwidth estimate (pion's Google
// Congestion Control, fed by the browser's transport-wide feedback)
// restarts the encoder at the new bitrate the same way, since ffmpeg cannot
// retarget libvpx while running.
//
// # Signalling and TURN
//
// The liveview package authorizes /live/{session}/webrtc with the
// live-view token (the same checks as the VNC websocket) and hands the
// websocket to Server.Serve, which speaks a small JSON protocol (see
// message): hello with ICE servers, the browser's offer (again for an ICE
// restart), the answer, trickled candidates both ways, and fallback.
//
// TURN credentials follow the TURN REST scheme under a secret drawn when
// the daemon starts: the user name is "<expiry>:<session>", the password an
// HMAC of it. Nothing is stored, a restart voids them all, and because the
// user name names the session, the server refuses it once the session has
// ended and counts relays per session against a quota.
package webrtc
