package decrypt_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/containers/ocicrypt"
	"github.com/containers/ocicrypt/config"
	keyproviderconfig "github.com/containers/ocicrypt/config/keyprovider-config"
	"github.com/containers/ocicrypt/keywrap/keyprovider"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/cocoon-containers/cocoon/image/decrypt"
)

// TestOcicryptKeyProviderProtocol: upstream ocicrypt (v1.3, what current
// skopeo, buildah and containerd's imgcrypt link) encrypts a layer for the
// attestation-agent key provider, running the test key provider through
// its "cmd" protocol as OCICRYPT_KEYPROVIDER_CONFIG would; the Decrypter
// opens the result.
func TestOcicryptKeyProviderProtocol(t *testing.T) {
	key := newKey(t)
	keyFile := filepath.Join(t.TempDir(), "kek")
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	ocicrypt.RegisterKeyWrapper("provider.attestation-agent", keyprovider.NewKeyWrapper("attestation-agent",
		keyproviderconfig.KeyProviderAttrs{Command: &keyproviderconfig.Command{Path: keyProvider(t)}}))
	cc, err := config.EncryptWithKeyProvider([][]byte{[]byte("attestation-agent:keyid=" + kid1 + "::keypath=" + keyFile)})
	if err != nil {
		t.Fatal(err)
	}

	ls, err := plainImage(t).Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ls[1].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	r, fin, err := ocicrypt.EncryptLayer(cc.EncryptConfig, bytes.NewReader(plain), ocispec.Descriptor{
		MediaType: ocispec.MediaTypeImageLayerGzip,
		Digest:    digest.FromBytes(plain),
		Size:      int64(len(plain)),
	})
	if err != nil {
		t.Fatal(err)
	}
	enc, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	anns, err := fin()
	if err != nil {
		t.Fatal(err)
	}
	p := decodePacket(t, anns[decrypt.AnnotationKeyProvider])
	if p.Kid != kid1 || p.WrapType != "A256GCM" {
		t.Fatalf("packet from the key provider: kid %q wrap_type %q", p.Kid, p.WrapType)
	}
	if bytes.Contains(enc, plain[:64]) {
		t.Fatal("the encrypted layer holds plaintext")
	}

	sum := sha256.Sum256(enc)
	l := v1.Descriptor{
		MediaType:   ocispec.MediaTypeImageLayerGzip + "+encrypted",
		Digest:      v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])},
		Size:        int64(len(enc)),
		Annotations: anns,
	}
	out, err := decrypt.New(newFetcher(path1, key)).Decrypt(context.Background(), l, bytes.NewReader(enc))
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, plain) {
		t.Errorf("decrypted %d bytes differ from the %d plain ones", len(got), len(plain))
	}
}
