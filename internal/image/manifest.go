package image

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

const (
	manifestFile = "manifest.json"
	// manifestSchema is bumped when Manifest changes incompatibly.
	manifestSchema = 1
)

// AgentInfo describes the hangar-agent binary inside an image.
type AgentInfo struct {
	Path           string `json:"path"` // inside the image
	SHA256         string `json:"sha256"`
	Size           int64  `json:"size"`
	GoVersion      string `json:"go_version,omitempty"`
	SourceRevision string `json:"source_revision,omitempty"` // git commit of the source tree it was built from, "+dirty" when modified
}

// Manifest is the record written beside every built artifact (kernel or
// rootfs image): what went in, how big it is, how long it took.
type Manifest struct {
	Schema        int                `json:"schema"`
	Kind          string             `json:"kind"` // "kernel" or "rootfs"
	ID            string             `json:"id"`   // sha256 of all inputs, hex
	Flavor        string             `json:"flavor,omitempty"`
	Inputs        map[string]string  `json:"inputs"` // input name → sha256 or value
	CreatedAt     time.Time          `json:"created_at"`
	BuildSeconds  float64            `json:"build_seconds"`
	StepSeconds   map[string]float64 `json:"step_seconds,omitempty"`
	Files         map[string]FileSum `json:"files"`
	KernelID      string             `json:"kernel_id,omitempty"`
	KernelVersion string             `json:"kernel_version,omitempty"`
	Cmdline       string             `json:"cmdline,omitempty"`
	LayerID       string             `json:"layer_id,omitempty"`
	Packages      map[string]string  `json:"packages,omitempty"` // Debian package → version (dpkg-query)
	NPM           map[string]string  `json:"npm,omitempty"`      // npm package → installed version
	Agent         *AgentInfo         `json:"agent,omitempty"`
	ContentBytes  int64              `json:"content_bytes,omitempty"` // allocated bytes of the root tree
	ImageBytes    int64              `json:"image_bytes,omitempty"`   // apparent size of the image file
	CompileUnits  int64              `json:"compile_units,omitempty"` // kernel: objects compiled (progress total next time)
	LogPath       string             `json:"log_path,omitempty"`
}

func readManifest(dir string) (Manifest, error) {
	var m Manifest
	b, err := os.ReadFile(filepath.Join(dir, manifestFile))
	if err != nil {
		return m, fmt.Errorf("read manifest: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("decode manifest %s: %w", dir, err)
	}
	if m.Schema != manifestSchema {
		return m, fmt.Errorf("manifest %s: schema %d, want %d", dir, m.Schema, manifestSchema)
	}
	return m, nil
}

func writeManifest(dir string, m Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest: %w", err)
	}
	return writeFileAtomic(filepath.Join(dir, manifestFile), append(b, '\n'), 0o644)
}

// layerManifest is the record of a cached root tree (debootstrap plus a
// flavor's packages), from which images are made.
type layerManifest struct {
	Schema       int                `json:"schema"`
	Flavor       string             `json:"flavor"`
	ID           string             `json:"id"`
	Inputs       map[string]string  `json:"inputs"`
	CreatedAt    time.Time          `json:"created_at"`
	BuildSeconds float64            `json:"build_seconds"`
	StepSeconds  map[string]float64 `json:"step_seconds,omitempty"`
	Packages     map[string]string  `json:"packages"`
	NPM          map[string]string  `json:"npm,omitempty"`
	ContentBytes int64              `json:"content_bytes"`
	Files        int64              `json:"files"`
}

const layerManifestFile = "layer.json"

func readLayerManifest(dir string) (layerManifest, error) {
	var m layerManifest
	b, err := os.ReadFile(filepath.Join(dir, layerManifestFile))
	if err != nil {
		return m, fmt.Errorf("read layer manifest: %w", err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("decode layer manifest %s: %w", dir, err)
	}
	if m.Schema != manifestSchema {
		return m, fmt.Errorf("layer manifest %s: schema %d, want %d", dir, m.Schema, manifestSchema)
	}
	return m, nil
}
