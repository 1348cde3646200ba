// Package sigpolicy evaluates an image signature policy written in the
// containers-policy.json format for the "docker" transport: the requirement
// types insecureAcceptAnything, reject and sigstoreSigned (cosign signatures
// with an ECDSA P-256 public key, stored in the registry under the tag
// sha256-<digest hex>.sig), per-scope requirement lists chosen by the most
// specific matching scope, a transport default and a global default.
package sigpolicy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// Policy is a parsed containers-policy.json.
type Policy struct {
	Default    []Requirement                       `json:"default"`
	Transports map[string]map[string][]Requirement `json:"transports"`
}

// Requirement is one entry of a requirement list; every entry of the chosen
// list must be satisfied.
type Requirement struct {
	Type           string          `json:"type"`
	KeyPath        string          `json:"keyPath,omitempty"`
	KeyPaths       []string        `json:"keyPaths,omitempty"`
	KeyData        string          `json:"keyData,omitempty"`
	KeyDatas       []string        `json:"keyDatas,omitempty"`
	SignedIdentity *SignedIdentity `json:"signedIdentity,omitempty"`

	keys []*ecdsa.PublicKey
}

// SignedIdentity says how the identity in a signature must relate to the
// reference being pulled.
type SignedIdentity struct {
	Type             string `json:"type"`
	DockerReference  string `json:"dockerReference,omitempty"`
	DockerRepository string `json:"dockerRepository,omitempty"`
}

// ErrDenied is wrapped by every policy denial.
var ErrDenied = errors.New("image denied by signature policy")

// Parse reads a policy document; key files named by keyPath are read now.
func Parse(b []byte) (*Policy, error) { return ParseWith(b, os.ReadFile) }

// ParseWith is Parse with keyPath values resolved by readKey: the guest
// resolves kbs:/// resource URIs through the KBS, as the confidential
// containers image service does.
func ParseWith(b []byte, readKey func(path string) ([]byte, error)) (*Policy, error) {
	var p Policy
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("signature policy: %w", err)
	}
	if p.Default == nil {
		return nil, fmt.Errorf("signature policy: \"default\" is required")
	}
	if err := prepare(p.Default, "default", readKey); err != nil {
		return nil, err
	}
	for tr, scopes := range p.Transports {
		for scope, reqs := range scopes {
			if err := prepare(reqs, fmt.Sprintf("transports.%s[%q]", tr, scope), readKey); err != nil {
				return nil, err
			}
		}
	}
	return &p, nil
}

// ParseFile reads a policy from a file.
func ParseFile(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signature policy: %w", err)
	}
	return Parse(b)
}

func prepare(reqs []Requirement, where string, readKey func(string) ([]byte, error)) error {
	if len(reqs) == 0 {
		return fmt.Errorf("signature policy %s: empty requirement list", where)
	}
	for i := range reqs {
		r := &reqs[i]
		switch r.Type {
		case "insecureAcceptAnything", "reject":
		case "sigstoreSigned":
			var pems [][]byte
			for _, p := range append(append([]string{}, r.KeyPaths...), nonEmpty(r.KeyPath)...) {
				b, err := readKey(p)
				if err != nil {
					return fmt.Errorf("signature policy %s: key %s: %w", where, p, err)
				}
				pems = append(pems, b)
			}
			for _, d := range append(append([]string{}, r.KeyDatas...), nonEmpty(r.KeyData)...) {
				b, err := base64.StdEncoding.DecodeString(d)
				if err != nil {
					return fmt.Errorf("signature policy %s: keyData is not base64", where)
				}
				pems = append(pems, b)
			}
			if len(pems) == 0 {
				return fmt.Errorf("signature policy %s: sigstoreSigned needs keyPath or keyData (keyless is not supported)", where)
			}
			for _, b := range pems {
				k, err := parseKey(b)
				if err != nil {
					return fmt.Errorf("signature policy %s: %w", where, err)
				}
				r.keys = append(r.keys, k)
			}
			if r.SignedIdentity == nil {
				r.SignedIdentity = &SignedIdentity{Type: "matchRepoDigestOrExact"}
			}
			switch r.SignedIdentity.Type {
			case "matchExact", "matchRepoDigestOrExact", "matchRepository":
			case "exactReference":
				if _, err := name.ParseReference(r.SignedIdentity.DockerReference); err != nil {
					return fmt.Errorf("signature policy %s: exactReference: %w", where, err)
				}
			case "exactRepository":
				if _, err := name.NewRepository(r.SignedIdentity.DockerRepository); err != nil {
					return fmt.Errorf("signature policy %s: exactRepository: %w", where, err)
				}
			default:
				return fmt.Errorf("signature policy %s: unsupported signedIdentity type %q", where, r.SignedIdentity.Type)
			}
		default:
			return fmt.Errorf("signature policy %s: unsupported requirement type %q", where, r.Type)
		}
	}
	return nil
}

func nonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}

func parseKey(b []byte) (*ecdsa.PublicKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("key is not a PEM PUBLIC KEY")
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("key is not ECDSA P-256")
	}
	return ek, nil
}

// repoName is the repository in the form containers/image uses
// (docker.io/library/x rather than index.docker.io/library/x).
func repoName(r name.Repository) string {
	n := r.Name()
	if rest, ok := strings.CutPrefix(n, name.DefaultRegistry+"/"); ok {
		return "docker.io/" + rest
	}
	return n
}

// refString is repoName plus :tag or @digest.
func refString(ref name.Reference) string {
	switch r := ref.(type) {
	case name.Tag:
		return repoName(r.Context()) + ":" + r.TagStr()
	case name.Digest:
		return repoName(r.Context()) + "@" + r.DigestStr()
	}
	return repoName(ref.Context())
}

// Requirements returns the requirement list that applies to ref, and the
// scope that chose it ("" for the transport default, "default" for the
// global one).
func (p *Policy) Requirements(ref name.Reference) ([]Requirement, string) {
	scopes := p.Transports["docker"]
	if scopes != nil {
		if reqs, ok := scopes[refString(ref)]; ok {
			return reqs, refString(ref)
		}
		// The repository, then each shorter path prefix, then wildcard hosts.
		repo := repoName(ref.Context())
		for s := repo; s != ""; {
			if reqs, ok := scopes[s]; ok {
				return reqs, s
			}
			i := strings.LastIndexByte(s, '/')
			if i < 0 {
				break
			}
			s = s[:i]
		}
		host := ref.Context().RegistryStr()
		if host == name.DefaultRegistry {
			host = "docker.io"
		}
		for h := host; ; {
			i := strings.IndexByte(h, '.')
			if i < 0 {
				break
			}
			h = h[i+1:]
			if reqs, ok := scopes["*."+h]; ok {
				return reqs, "*." + h
			}
		}
		if reqs, ok := scopes[""]; ok {
			return reqs, ""
		}
	}
	return p.Default, "default"
}

// Verify implements image/pull's Verifier: it evaluates the requirements for
// ref against the manifest digest the reference resolved to.
func (p *Policy) Verify(ctx context.Context, ref name.Reference, digest v1.Hash, opts ...remote.Option) error {
	reqs, scope := p.Requirements(ref)
	for _, r := range reqs {
		switch r.Type {
		case "insecureAcceptAnything":
		case "reject":
			return fmt.Errorf("%w: scope %q rejects %s", ErrDenied, scope, refString(ref))
		case "sigstoreSigned":
			if err := verifySigstore(ctx, &r, ref, digest, opts); err != nil {
				return fmt.Errorf("%w: scope %q requires a signature: %v", ErrDenied, scope, err)
			}
		}
	}
	return nil
}

// identityAllowed reports whether a signature's docker-reference satisfies
// the requirement for the pulled ref.
func identityAllowed(si *SignedIdentity, ref name.Reference, signed string) (bool, error) {
	sref, err := name.ParseReference(signed)
	if err != nil {
		return false, fmt.Errorf("signed identity %q: %v", signed, err)
	}
	// A bare repository parses as :latest; keep the form it was written in.
	signedIsRepoOnly := !strings.Contains(signed[strings.LastIndexByte(signed, '/')+1:], ":") && !strings.Contains(signed, "@")
	sameRepo := repoName(sref.Context()) == repoName(ref.Context())
	switch si.Type {
	case "matchRepository":
		return sameRepo, nil
	case "exactRepository":
		want, _ := name.NewRepository(si.DockerRepository)
		return repoName(sref.Context()) == repoName(want), nil
	case "exactReference":
		want, _ := name.ParseReference(si.DockerReference)
		return !signedIsRepoOnly && refString(sref) == refString(want), nil
	case "matchRepoDigestOrExact":
		if _, isDigest := ref.(name.Digest); isDigest {
			return sameRepo, nil
		}
		return !signedIsRepoOnly && refString(sref) == refString(ref), nil
	case "matchExact":
		return !signedIsRepoOnly && refString(sref) == refString(ref), nil
	}
	return false, nil
}
