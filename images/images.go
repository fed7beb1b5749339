// Package images holds the recipes of hangar's guest images as data: the
// kernel config fragment, the Debian package list of each flavor, the pinned
// npm packages and the service declarations the images carry. They are
// embedded into the hangar binary so that `hangar image build` works from
// any directory, and every byte of them feeds the image cache keys
// (internal/image), so editing a file here rebuilds exactly what depends on it.
package images

import "embed"

// FS is the recipe tree: kernel/, flavors/, npm/, services/, chromium/.
//
//go:embed kernel/hangar.config flavors/*.packages npm/pins.txt services chromium
var FS embed.FS
