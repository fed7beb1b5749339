package vm

import (
	"go/build"
	"strings"
	"testing"
)

// TestServiceDoesNotImportTransport: the VM manager is a service; the HTTP
// API consumes it through an interface it owns (httpapi.VMService). If vm
// imported httpapi, the transport's types and limits would leak into the
// service and the two could never be built or tested apart.
func TestServiceDoesNotImportTransport(t *testing.T) {
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasSuffix(imp, "/internal/httpapi") || strings.Contains(imp, "/internal/httpapi/") {
			t.Errorf("internal/vm imports %s; the service must not depend on the transport", imp)
		}
	}
}
