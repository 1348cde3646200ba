package container

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestResolveUser(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/passwd", "app:x:1000:1001::/home/app:/bin/sh\n")
	write("etc/group", "extra:x:2000:app\n")

	u := specs.User{Username: "app"}
	if err := resolveUser(root, &u); err != nil {
		t.Fatalf("resolveUser: %v", err)
	}
	if u.UID != 1000 || u.GID != 1001 || len(u.AdditionalGids) != 1 || u.AdditionalGids[0] != 2000 || u.Username != "" {
		t.Errorf("got %+v, want uid 1000 gid 1001 groups [2000]", u)
	}

	u = specs.User{Username: "missing"}
	if err := resolveUser(root, &u); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("unknown user: got %v, want invalid argument", err)
	}

	// A passwd symlinked out of the rootfs must not be read from the host.
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "passwd"), []byte("hostonly:x:4242:4242::/:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(root, "etc/passwd"))
	if err := os.Symlink(filepath.Join(outside, "passwd"), filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	u = specs.User{Username: "hostonly"}
	if err := resolveUser(root, &u); err == nil {
		t.Errorf("resolved %+v through a symlink leaving the rootfs", u)
	}
}
