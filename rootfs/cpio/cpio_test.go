package cpio

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func sample(t *testing.T) *Archive {
	t.Helper()
	a := New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.AddFile("/init", 0o755, []byte("#!/bin/sh\necho hi\n")))
	must(a.AddFile("etc/cocoon/modules.load", 0o644, []byte("/lib/modules/x/a.ko\n")))
	must(a.AddSymlink("/bin/sh", "busybox"))
	must(a.AddDir("/proc", 0o555))
	must(a.AddFile("/lib/modules/x/a.ko", 0o644, bytes.Repeat([]byte{0xAB}, 1000)))
	return a
}

func TestCpioListsAndExtracts(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Fatalf("cpio not installed (make deps installs it): %v", err)
	}
	dir := t.TempDir()
	var buf bytes.Buffer
	if _, err := sample(t).WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	arc := filepath.Join(dir, "a.cpio")
	if err := os.WriteFile(arc, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	list := exec.Command("cpio", "-t", "--quiet")
	list.Stdin = bytes.NewReader(buf.Bytes())
	out, err := list.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}
	got := strings.Fields(string(out))
	want := []string{"bin", "bin/sh", "etc", "etc/cocoon", "etc/cocoon/modules.load", "init", "lib", "lib/modules", "lib/modules/x", "lib/modules/x/a.ko", "proc"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("cpio -t = %v, want %v", got, want)
	}
	root := filepath.Join(dir, "root")
	os.Mkdir(root, 0o755)
	ext := exec.Command("cpio", "-i", "-d", "--quiet", "--no-absolute-filenames")
	ext.Dir = root
	ext.Stdin = bytes.NewReader(buf.Bytes())
	if out, err := ext.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(root, "init"))
	if err != nil || string(b) != "#!/bin/sh\necho hi\n" {
		t.Fatalf("extracted init = %q, %v", b, err)
	}
	if st, _ := os.Stat(filepath.Join(root, "init")); st.Mode().Perm() != 0o755 {
		t.Fatalf("init mode = %v, want 0755", st.Mode())
	}
	if target, err := os.Readlink(filepath.Join(root, "bin/sh")); err != nil || target != "busybox" {
		t.Fatalf("bin/sh -> %q, %v; want busybox", target, err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "lib/modules/x/a.ko")); len(b) != 1000 {
		t.Fatalf("module size = %d, want 1000", len(b))
	}
}

func TestDeterministic(t *testing.T) {
	var a, b bytes.Buffer
	if _, err := sample(t).WriteTo(&a); err != nil {
		t.Fatal(err)
	}
	if _, err := sample(t).WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two archives of the same entries differ")
	}
	if a.Len()%512 != 0 {
		t.Fatalf("archive size %d not padded to 512", a.Len())
	}
}

func TestRejectsConflicts(t *testing.T) {
	a := New()
	if err := a.AddFile("/x", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if err := a.AddFile("/x", 0o644, nil); err == nil {
		t.Fatal("adding /x twice succeeded")
	}
	if err := a.AddFile("/x/y", 0o644, nil); err == nil {
		t.Fatal("adding a file under a regular file succeeded")
	}
	if err := a.AddFile("/", 0o644, nil); err == nil {
		t.Fatal("adding / as a file succeeded")
	}
}
