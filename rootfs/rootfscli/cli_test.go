package rootfscli

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"

	"github.com/cocoon-containers/cocoon/image/imagetest"
	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rootfs/kernel/kerneltest"
)

var rootLine = regexp.MustCompile(`(?m)^Root hash:\s+([0-9a-f]{64})$`)

func TestVerityFormatAndVerify(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	b := make([]byte, 300*4096)
	rand.New(rand.NewSource(1)).Read(b)
	if err := os.WriteFile(data, b, 0o644); err != nil {
		t.Fatal(err)
	}
	hash := filepath.Join(dir, "hash")
	var out bytes.Buffer
	// Flags after the positionals, as veritysetup allows.
	if err := Run(context.Background(), []string{"verity", "format", data, hash, "--salt", "abcd"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	m := rootLine.FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no Root hash line in:\n%s", out.String())
	}
	for _, want := range []string{"Hash type:", "Data blocks:     \t300", "Salt:            \tabcd", "Hash algorithm:  \tsha256"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	theirs, err := exec.Command("veritysetup", "format", data, filepath.Join(dir, "h2"), "--salt", "abcd").CombinedOutput()
	if err != nil {
		t.Fatalf("veritysetup: %v\n%s", err, theirs)
	}
	if tm := rootLine.FindStringSubmatch(string(theirs)); tm == nil || tm[1] != m[1] {
		t.Fatalf("root hash %s, veritysetup %v", m[1], tm)
	}
	// Every line but the first (names the hash file) and the random UUID
	// reads as veritysetup prints it.
	strip := func(s string) string {
		lines := strings.Split(strings.TrimSpace(s), "\n")
		var keep []string
		for _, l := range lines[1:] {
			if !strings.HasPrefix(l, "UUID:") {
				keep = append(keep, l)
			}
		}
		return strings.Join(keep, "\n")
	}
	if got, want := strip(out.String()), strip(string(theirs)); got != want {
		t.Errorf("verity format prints:\n%s\nveritysetup prints:\n%s", got, want)
	}
	if st, _ := os.Stat(hash); !strings.Contains(out.String(), fmt.Sprintf("Hash device size: \t%d [bytes]", st.Size())) {
		t.Errorf("hash device size line does not match the file's %d bytes", st.Size())
	}
	out.Reset()
	if err := Run(context.Background(), []string{"verity", "verify", data, hash, m[1]}, &out, &out); err != nil {
		t.Fatalf("verify: %v", err)
	}
	b[4096*7] ^= 1
	os.WriteFile(data, b, 0o644)
	if err := Run(context.Background(), []string{"verity", "verify", data, hash, m[1]}, &out, &out); err == nil {
		t.Fatal("verify accepted tampered data")
	}
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{nil, {"verity"}, {"verity", "format", "x"}, {"verity", "verify", "a", "b", "nothex"}, {"build"}, {"frobnicate"}} {
		if err := Run(context.Background(), args, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
			t.Errorf("Run(%v) succeeded, want an error", args)
		}
	}
}

func TestBuildAndKernelFetchFlags(t *testing.T) {
	dir := t.TempDir()
	rpmPath := kerneltest.WriteRPM(t, dir, "6.1.58.mshv8", "1.azl3", "gzip", []kerneltest.File{
		{Path: "/usr/share/cloud-hypervisor/bzImage", Data: []byte("bzImage")},
	})
	cache := filepath.Join(dir, "cache")
	var out, errOut bytes.Buffer
	if err := Run(context.Background(), []string{"kernel", "fetch", "--out", cache, "--package", rpmPath}, &out, &errOut); err != nil {
		t.Fatalf("kernel fetch: %v\n%s", err, errOut.String())
	}
	wantVmlinuz := filepath.Join(cache, "kernel-6.1.58.mshv8-1.azl3.x86_64", "usr/share/cloud-hypervisor/bzImage")
	for _, want := range []string{"version: 6.1.58.mshv8-1.azl3\n", "vmlinuz: " + wantVmlinuz + "\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("kernel fetch output lacks %q:\n%s", want, out.String())
		}
	}

	os.WriteFile(filepath.Join(dir, "agent"), []byte("stand-in"), 0o755)
	cfg := filepath.Join(dir, "build.toml")
	os.WriteFile(cfg, []byte("agent = \"agent\"\nkernel = \"linux-image-amd64\"\nmodules = []\nskip_agent_check = true\ncmdline = \"quiet\"\n"), 0o644)
	outDir := filepath.Join(dir, "out")
	out.Reset()
	args := []string{"build", "--config", cfg, "--kernel", rpmPath, "--kernel-cache", cache, "--cmdline", "console=hvc0", "--default-policy", "allow-only-setpolicy", "--out", outDir}
	if err := Run(context.Background(), args, &out, &errOut); err != nil {
		t.Fatalf("build: %v\n%s", err, errOut.String())
	}
	b, err := os.ReadFile(filepath.Join(outDir, rootfs.ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	var m rootfs.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	hd := rootfs.PolicyHostData(rootfs.AllowOnlySetPolicy())
	if m.Cmdline != "console=hvc0" || m.KernelVersion != "6.1.58.mshv8-1.azl3" || m.ReferenceValues.DefaultPolicyHostData != hex.EncodeToString(hd[:]) {
		t.Errorf("flags did not override the configuration: %+v", m)
	}
	if !strings.Contains(out.String(), "initrd:                   "+filepath.Join(outDir, rootfs.InitrdFile)) {
		t.Errorf("build output lacks the initrd path:\n%s", out.String())
	}

	// Without a configuration the agent is checked: a text file is refused.
	err = Run(context.Background(), []string{"build", "--agent", filepath.Join(dir, "agent"), "--kernel", rpmPath, "--kernel-cache", cache, "--out", outDir}, &out, &errOut)
	if !errors.Is(err, rootfs.ErrBadAgent) {
		t.Fatalf("build with a text agent = %v, want ErrBadAgent", err)
	}
}

func TestLayers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "a", Body: "one"}), imagetest.Layer(t, imagetest.Entry{Name: ".wh.a"}))
	dir := t.TempDir()
	p, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Run(context.Background(), []string{"layers", filepath.Join(dir, "oci"), "--out", filepath.Join(dir, "imgs")}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	want, err := rootfs.LayerImagesFromLayout(context.Background(), filepath.Join(dir, "oci"), "", filepath.Join(dir, "check"))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range want {
		lines = append(lines, l.DiffID+" "+hex.EncodeToString(l.RootHash))
	}
	if got := strings.TrimSpace(out.String()); got != strings.Join(lines, "\n") {
		t.Errorf("output:\n%s\nwant:\n%s", got, strings.Join(lines, "\n"))
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "imgs")); len(ents) != 2 {
		t.Errorf("--out holds %d files, want the 2 layer images", len(ents))
	}
	if err := Run(context.Background(), []string{"layers"}, io.Discard, io.Discard); err == nil {
		t.Error("layers without a layout accepted")
	}
}
