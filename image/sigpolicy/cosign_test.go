package sigpolicy

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cocoon-containers/cocoon/image/imagetest"
)

// cosignBinary is the pinned cosign that make go-deps installs.
func cosignBinary(t *testing.T) string {
	p, err := filepath.Abs(filepath.Join("..", "..", ".tools", "bin", "cosign"))
	if err == nil {
		if _, err = os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("cosign not installed in .tools/bin (make go-deps)")
	return ""
}

func runCosign(t *testing.T, bin, dir string, args ...string) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	// An empty key password, and no Sigstore services: signatures stay in
	// the loopback registry only.
	cmd.Env = append(os.Environ(), "COSIGN_PASSWORD=", "HOME="+dir, "TUF_ROOT="+filepath.Join(dir, "tuf"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cosign %v: %v\n%s", args, err, out)
	}
}

func TestRealCosign(t *testing.T) {
	bin := cosignBinary(t)
	reg := imagetest.NewRegistry(t)
	keys, other := t.TempDir(), t.TempDir()
	runCosign(t, bin, keys, "generate-key-pair")
	runCosign(t, bin, other, "generate-key-pair")

	repo := reg.Host + "/cosigned"
	sign := func(tag, body, keyDir string) string {
		img := imagetest.Image(t, imagetest.Layer(t, imagetest.Entry{Name: "hello", Body: body}))
		d := imagetest.Push(t, repo+":"+tag, img)
		ref := repo + "@" + d.String()
		if keyDir != "" {
			runCosign(t, bin, keyDir, "sign", "--key", "cosign.key", "--tlog-upload=false",
				"--allow-insecure-registry", "--allow-http-registry", "--yes", ref)
		}
		return ref
	}
	good := sign("good", "signed by us", keys)
	sign("unsigned", "nobody signed", "")
	sign("other", "signed by someone else", other)

	p, err := Parse([]byte(`{"default":[{"type":"reject"}],"transports":{"docker":{"` + repo + `":[
		{"type":"sigstoreSigned","keyPath":"` + filepath.Join(keys, "cosign.pub") + `","signedIdentity":{"type":"matchRepository"}}]}}}`))
	if err != nil {
		t.Fatal(err)
	}
	rootfs, err := pullWith(t, p, good)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "hello")); string(b) != "signed by us" {
		t.Fatalf("content %q", b)
	}
	// By tag too: the tag resolves to the signed digest.
	if _, err := pullWith(t, p, repo+":good"); err != nil {
		t.Fatal(err)
	}
	for _, tag := range []string{"unsigned", "other"} {
		if _, err := pullWith(t, p, repo+":"+tag); !errors.Is(err, ErrDenied) {
			t.Errorf("%s: got %v", tag, err)
		}
	}
}
