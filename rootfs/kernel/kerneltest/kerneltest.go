// Package kerneltest gives tests Debian's guest kernel, downloaded once per
// machine into /var/cache/cocoon/kernel with apt-get download.
package kerneltest

import (
	"context"
	"os"
	"sync"
	"testing"

	"github.com/cocoon-containers/cocoon/rootfs/kernel"
)

// CacheDir is where the kernel package is kept between runs.
const CacheDir = "/var/cache/cocoon/kernel"

var (
	once sync.Once
	k    *kernel.Kernel
	kerr error
)

// Debian returns the unpacked Debian kernel. It skips under -short (the
// download needs root and the package mirror) and fails if it cannot fetch.
func Debian(t testing.TB) *kernel.Kernel {
	t.Helper()
	if testing.Short() {
		t.Skip("fetching the Debian kernel package is skipped in -short mode")
	}
	if os.Getuid() != 0 {
		t.Skip("fetching the Debian kernel package needs root")
	}
	once.Do(func() {
		k, kerr = kernel.FetchDebian(context.Background(), CacheDir, kernel.DefaultPackage, nil)
	})
	if kerr != nil {
		t.Fatalf("fetch Debian kernel: %v", kerr)
	}
	return k
}
