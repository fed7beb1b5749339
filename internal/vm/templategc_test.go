package vm

import (
	"os"
	"path/filepath"
	"testing"
)

// TestGCTemplates: a template of a kept image stays; one of a removed
// image, an unreadable one and an interrupted build go; a dry run removes
// nothing.
func TestGCTemplates(t *testing.T) {
	data := t.TempDir()
	mk := func(name, js string) string {
		dir := filepath.Join(data, "templates", name)
		if err := os.MkdirAll(filepath.Join(dir, "snapshot"), 0o700); err != nil {
			t.Fatal(err)
		}
		if js != "" {
			if err := os.WriteFile(filepath.Join(dir, "template.json"), []byte(js), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	kept := mk("browser-a", `{"image_id":"keepme"}`)
	old := mk("browser-b", `{"image_id":"gone"}`)
	broken := mk("browser-c", `{`)
	tmp := mk("browser-d.tmp", `{"image_id":"keepme"}`)
	keep := func(id string) bool { return id == "keepme" }

	removed, err := GCTemplates(data, keep, true)
	if err != nil || len(removed) != 3 {
		t.Fatalf("dry run: %v, %v; want 3 listed", removed, err)
	}
	if _, err := os.Stat(old); err != nil {
		t.Fatal("dry run removed a template")
	}
	removed, err = GCTemplates(data, keep, false)
	if err != nil || len(removed) != 3 {
		t.Fatalf("gc: %v, %v", removed, err)
	}
	for _, d := range []string{old, broken, tmp} {
		if _, err := os.Stat(d); !os.IsNotExist(err) {
			t.Errorf("%s kept", d)
		}
	}
	if _, err := os.Stat(kept); err != nil {
		t.Errorf("template of a kept image removed: %v", err)
	}
}
