// Package kerneltest gives tests Debian's guest kernel, downloaded once per
// machine into /var/cache/cocoon/kernel with apt-get download, and writes
// fake kernel RPMs.
package kerneltest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/cocoon-containers/cocoon/rootfs/cpio"
	"github.com/cocoon-containers/cocoon/rootfs/kernel"
	"github.com/cocoon-containers/cocoon/rootfs/rpm/rpmtest"
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

// File is one entry of a fake kernel package.
type File struct {
	Path string
	Data []byte
	// Link makes the entry a symlink to Data.
	Link bool
}

// WriteRPM writes a kernel RPM holding files into dir and returns its path.
func WriteRPM(t testing.TB, dir, version, release, compressor string, files []File) string {
	t.Helper()
	a := cpio.New()
	for _, f := range files {
		var err error
		if f.Link {
			err = a.AddSymlink(f.Path, string(f.Data))
		} else {
			err = a.AddFile(f.Path, 0o644, f.Data)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	var payload bytes.Buffer
	if _, err := a.WriteTo(&payload); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "kernel-"+version+"-"+release+".x86_64.rpm")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := rpmtest.Write(f, rpmtest.Spec{Name: "kernel", Version: version, Release: release, Compressor: compressor, Payload: payload.Bytes()}); err != nil {
		t.Fatal(err)
	}
	return p
}
