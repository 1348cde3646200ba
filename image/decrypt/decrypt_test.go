package decrypt_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cocoon-containers/cocoon/image/decrypt"
	"github.com/cocoon-containers/cocoon/image/pull"
)

const kid1 = "kbs:///default/key/1"

// TestSkopeoEncryptedImagePulls: skopeo, through the key provider, makes
// every layer +encrypted with an attestation-agent packet for the kid, and
// a pull with the right key from the KBS yields the files.
func TestSkopeoEncryptedImagePulls(t *testing.T) {
	key := newKey(t)
	e := encryptWithSkopeo(t, kid1, key)
	if len(e.Manifest.Layers) != 2 {
		t.Fatalf("%d layers, want 2", len(e.Manifest.Layers))
	}
	for i, l := range e.Manifest.Layers {
		if !strings.HasSuffix(string(l.MediaType), "+encrypted") {
			t.Errorf("layer %d media type %s is not +encrypted", i, l.MediaType)
		}
		ann, ok := l.Annotations[decrypt.AnnotationKeyProvider]
		if !ok {
			t.Fatalf("layer %d has no %s annotation: %v", i, decrypt.AnnotationKeyProvider, l.Annotations)
		}
		p := decodePacket(t, ann)
		if p.Kid != kid1 || p.WrapType != "A256GCM" {
			t.Errorf("layer %d packet kid %q wrap_type %q", i, p.Kid, p.WrapType)
		}
		if l.Annotations[decrypt.AnnotationPubOpts] == "" {
			t.Errorf("layer %d has no pubopts", i)
		}
	}
	t.Logf("media type %s", e.Manifest.Layers[0].MediaType)

	f := newFetcher("default/key/1", key)
	d := decrypt.New(f)
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	if _, err := pull.Pull(context.Background(), e.Ref, rootfs, pullOpts(d)); err != nil {
		t.Fatal(err)
	}
	checkFiles(t, rootfs)
}
