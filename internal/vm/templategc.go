package vm

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
)

// GCTemplates removes the templates under dataDir/templates whose image is
// no longer kept (keepImage false), unreadable ones and interrupted builds
// (".tmp"), and returns the removed paths. A running daemon whose pool
// used a removed template builds a new one at its next clone, so it is
// safe while the daemon runs; `hangar image gc` calls it after the image
// cache's own gc.
func GCTemplates(dataDir string, keepImage func(id string) bool, dryRun bool) ([]string, error) {
	root := filepath.Join(dataDir, "templates")
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var removed []string
	var errList []error
	for _, e := range ents {
		dir := filepath.Join(root, e.Name())
		keep := false
		if !strings.HasSuffix(e.Name(), ".tmp") {
			if b, err := os.ReadFile(filepath.Join(dir, "template.json")); err == nil {
				var td templateDoc
				keep = json.Unmarshal(b, &td) == nil && td.ImageID != "" && keepImage(td.ImageID)
			}
		}
		if keep {
			continue
		}
		removed = append(removed, dir)
		if !dryRun {
			if err := os.RemoveAll(dir); err != nil {
				errList = append(errList, err)
			}
		}
	}
	return removed, errors.Join(errList...)
}
