package shimtest

import (
	"os"
	"testing"
)

// RequireRoot skips t when it cannot do what the shim does for real: it runs
// only as root and not under -short.
func RequireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped under -short: needs root, mounts and real processes")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}
