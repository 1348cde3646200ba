package sigpolicy

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

const (
	sigAnnotation   = "dev.cosignproject.cosign/signature"
	cosignSigType   = "cosign container image signature"
	maxPayloadBytes = 1 << 20
	maxSignatures   = 64
)

// payload is the simple-signing JSON cosign signs.
type payload struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
}

// SignatureTag is where cosign stores the signatures of digest in repo.
func SignatureTag(repo name.Repository, digest v1.Hash) name.Tag {
	return repo.Tag(fmt.Sprintf("%s-%s.sig", digest.Algorithm, digest.Hex))
}

// verifySigstore accepts when at least one signature stored for digest
// verifies with one of the requirement's keys, names digest, and carries an
// identity the requirement allows. The error lists why each one failed.
func verifySigstore(ctx context.Context, r *Requirement, ref name.Reference, digest v1.Hash, opts []remote.Option) error {
	tag := SignatureTag(ref.Context(), digest)
	img, err := remote.Image(tag, append(opts, remote.WithContext(ctx))...)
	if err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
			return fmt.Errorf("no signatures for %s (tag %s not found)", digest, tag.TagStr())
		}
		return fmt.Errorf("signatures of %s: %w", digest, err)
	}
	mf, err := img.Manifest()
	if err != nil {
		return fmt.Errorf("signatures of %s: %w", digest, err)
	}
	if len(mf.Layers) == 0 {
		return fmt.Errorf("no signatures for %s (empty %s)", digest, tag.TagStr())
	}
	if len(mf.Layers) > maxSignatures {
		return fmt.Errorf("signatures of %s: %d entries, more than %d", digest, len(mf.Layers), maxSignatures)
	}
	var why []string
	for i, l := range mf.Layers {
		err := checkOne(r, ref, digest, img, l)
		if err == nil {
			return nil
		}
		why = append(why, fmt.Sprintf("signature %d: %v", i, err))
	}
	return errors.New(strings.Join(why, "; "))
}

func checkOne(r *Requirement, ref name.Reference, digest v1.Hash, img v1.Image, l v1.Descriptor) error {
	b64, ok := l.Annotations[sigAnnotation]
	if !ok {
		return fmt.Errorf("no %s annotation", sigAnnotation)
	}
	sig, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return fmt.Errorf("signature is not base64")
	}
	if l.Size > maxPayloadBytes {
		return fmt.Errorf("payload of %d bytes is too large", l.Size)
	}
	layer, err := img.LayerByDigest(l.Digest)
	if err != nil {
		return err
	}
	rc, err := layer.Compressed() // the payload blob as stored, digest-checked
	if err != nil {
		return err
	}
	body, err := io.ReadAll(io.LimitReader(rc, maxPayloadBytes+1))
	rc.Close()
	if err != nil {
		return fmt.Errorf("payload: %w", err)
	}
	if sum := sha256.Sum256(body); int64(len(body)) != l.Size || fmt.Sprintf("sha256:%x", sum) != l.Digest.String() {
		return fmt.Errorf("payload does not match its digest %s", l.Digest)
	}
	sum := sha256.Sum256(body)
	verified := false
	for _, k := range r.keys {
		if ecdsa.VerifyASN1(k, sum[:], sig) {
			verified = true
			break
		}
	}
	if !verified {
		return fmt.Errorf("not signed by a trusted key")
	}
	var p payload
	if err := json.Unmarshal(body, &p); err != nil {
		return fmt.Errorf("signed payload is not simple-signing JSON")
	}
	if p.Critical.Type != cosignSigType {
		return fmt.Errorf("signed payload type %q", p.Critical.Type)
	}
	if p.Critical.Image.DockerManifestDigest != digest.String() {
		return fmt.Errorf("signed digest %s is not the pulled %s", p.Critical.Image.DockerManifestDigest, digest)
	}
	ok, err = identityAllowed(r.SignedIdentity, ref, p.Critical.Identity.DockerReference)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("signed identity %q does not satisfy %s for %s", p.Critical.Identity.DockerReference, r.SignedIdentity.Type, refString(ref))
	}
	return nil
}
