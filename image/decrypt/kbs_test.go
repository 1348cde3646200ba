//go:build simulated

package decrypt_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/image/decrypt"
	"github.com/cocoon-containers/cocoon/image/pull"
	"github.com/cocoon-containers/cocoon/kbs-client/client"
	"github.com/cocoon-containers/cocoon/kbs-client/kbstest"
	"github.com/cocoon-containers/cocoon/kbs-client/server"
)

// TestPullWithReferenceKBS: the layer key-encryption key is a resource of
// the reference KBS (default/key/2). A simulated guest whose MEASUREMENT
// and HOST_DATA the KBS policy accepts attests, gets the key and pulls the
// skopeo-encrypted image; one whose HOST_DATA differs is denied the key,
// and its pull fails naming the kid, with no rootfs and no key material
// in the error or the KBS log.
func TestPullWithReferenceKBS(t *testing.T) {
	const kid = "kbs:///default/key/2"
	key := newKey(t)
	k := kbstest.Start(t, server.Config{})
	if err := os.WriteFile(filepath.Join(k.Repo, "default", "key", "2"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	e := encryptWithSkopeo(t, kid, key)

	guest := kbstest.Guest(t, k.Srv.URL, kbstest.Measurement(), kbstest.HostData())
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if _, err := pull.Pull(context.Background(), e.Ref, rootfs, pullOpts(decrypt.New(guest))); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, rootfs)
	if n := k.Attests.Load(); n != 1 {
		t.Errorf("%d attestations for one pull, want 1", n)
	}

	otherHostData := kbstest.HostData()
	otherHostData[0] ^= 0xff
	intruder := kbstest.Guest(t, k.Srv.URL, kbstest.Measurement(), otherHostData)
	denied := filepath.Join(t.TempDir(), "rootfs")
	_, err := pull.Pull(context.Background(), e.Ref, denied, pullOpts(decrypt.New(intruder)))
	if err == nil {
		t.Fatal("a guest the KBS policy does not accept pulled the image")
	}
	if !strings.Contains(err.Error(), "fetching key "+kid+": ") {
		t.Errorf("error %q does not name the kid", err)
	}
	var kerr *client.Error
	if !errors.As(err, &kerr) || kerr.Status != 403 || !strings.HasSuffix(kerr.Type, "PolicyDeny") {
		t.Errorf("error %v does not carry the KBS's policy denial", err)
	}
	noSecret(t, err.Error(), key)
	noRootfs(t, denied)
	noSecret(t, k.Logs.String(), key)
}
