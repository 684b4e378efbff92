package store

import (
	"os/exec"
	"strings"
	"testing"
)

// TestArchitecture enforces the layering: the domain core (store/) and the
// admin API and CLI (admin/...) import nothing from Caddy, directly or
// through a dependency. caddymodule/ is the only glue.
func TestArchitecture(t *testing.T) {
	forbidden := []string{"github.com/caddyserver/"}
	for _, pkg := range []string{"github.com/keygate/keygate/store", "github.com/keygate/keygate/admin/..."} {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		deps := strings.Fields(string(out))
		if len(deps) < 10 {
			t.Fatalf("go list -deps %s listed only %d packages: %q", pkg, len(deps), deps)
		}
		for _, dep := range deps {
			for _, f := range forbidden {
				if strings.HasPrefix(dep, f) {
					t.Errorf("%s depends on %s: store/ and admin/ must not import Caddy (put the glue in caddymodule/)", pkg, dep)
				}
			}
		}
	}
}
