// Package novnc holds the noVNC RFB client library, vendored unchanged from
// the published npm package @novnc/novnc (version and integrity in VERSION),
// so the daemon can serve the live view without reaching the internet.
// Only what the RFB client loads at runtime is kept: core/ and the pako
// zlib port it imports from vendor/pako/, with the license texts.
package novnc

import "embed"

// FS is the vendored tree: core/..., vendor/pako/..., LICENSE.txt, AUTHORS,
// docs/LICENSE.*. core/rfb.js is the entry module; its relative imports
// resolve inside FS when FS is served at one URL prefix.
//
//go:embed core vendor LICENSE.txt AUTHORS docs VERSION
var FS embed.FS
