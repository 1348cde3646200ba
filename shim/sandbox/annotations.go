package sandbox

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"fmt"
	"hash"
	"io"
	"regexp"

	"github.com/BurntSushi/toml"
	"github.com/containerd/errdefs"
)

// Annotations the shim reads. Only the sandbox's own spec is consulted for
// the policy ones: later containers in the pod cannot change what the VM was
// launched with.
const (
	AnnotationContainerType = "io.kubernetes.cri.container-type"
	AnnotationSandboxID     = "io.kubernetes.cri.sandbox-id"
	AnnotationPolicy        = "io.katacontainers.config.agent.policy"
	AnnotationInitdata      = "io.katacontainers.config.hypervisor.cc_init_data"

	ContainerTypeSandbox   = "sandbox"
	ContainerTypeContainer = "container"
)

// maxPolicySize bounds a decoded policy or initdata document.
const maxPolicySize = 16 << 20

var idPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

// ValidID reports whether s is acceptable as a container, exec or sandbox id.
func ValidID(s string) error {
	if !idPattern.MatchString(s) {
		return fmt.Errorf("id %q: want %s: %w", s, idPattern, errdefs.ErrInvalidArgument)
	}
	return nil
}

// Role says where a container belongs, from its CRI annotations.
type Role struct {
	// SandboxID is the pod's id; for a container without CRI annotations it
	// is the container's own id.
	SandboxID string
	// IsSandbox is true for the pod sandbox (pause) container and for a
	// container that runs alone in its own VM.
	IsSandbox bool
}

// RoleOf reads the CRI annotations of container id.
func RoleOf(id string, annotations map[string]string) (Role, error) {
	switch annotations[AnnotationContainerType] {
	case "", ContainerTypeSandbox:
		return Role{SandboxID: id, IsSandbox: true}, nil
	case ContainerTypeContainer:
		sid := annotations[AnnotationSandboxID]
		if err := ValidID(sid); err != nil {
			return Role{}, fmt.Errorf("container %s: annotation %s: %w", id, AnnotationSandboxID, err)
		}
		return Role{SandboxID: sid}, nil
	default:
		return Role{}, fmt.Errorf("container %s: annotation %s=%q: %w", id, AnnotationContainerType, annotations[AnnotationContainerType], errdefs.ErrInvalidArgument)
	}
}

// PolicyInput is what the sandbox's annotations ask the guest to enforce.
type PolicyInput struct {
	// Document is sent to SetPolicy: Rego text, or an initdata TOML document.
	Document string
	// HostData binds Document into the launch: sha256 of a policy, or the
	// initdata digest truncated or zero-padded to 32 bytes.
	HostData [32]byte
}

// PolicyFromAnnotations decodes the policy or initdata annotation. It returns
// nil when neither is present: the guest keeps its image default and the VM
// is launched with HOST_DATA of zeros.
func PolicyFromAnnotations(annotations map[string]string) (*PolicyInput, error) {
	pol, hasPol := annotations[AnnotationPolicy]
	ini, hasIni := annotations[AnnotationInitdata]
	switch {
	case hasPol && hasIni:
		return nil, fmt.Errorf("both %s and %s are set: %w", AnnotationPolicy, AnnotationInitdata, errdefs.ErrInvalidArgument)
	case hasPol:
		text, err := decodeBase64(AnnotationPolicy, pol)
		if err != nil {
			return nil, err
		}
		return &PolicyInput{Document: string(text), HostData: sha256.Sum256(text)}, nil
	case hasIni:
		return initdataPolicy(ini)
	}
	return nil, nil
}

func decodeBase64(name, v string) ([]byte, error) {
	if base64.StdEncoding.DecodedLen(len(v)) > maxPolicySize {
		return nil, fmt.Errorf("annotation %s larger than %d bytes: %w", name, maxPolicySize, errdefs.ErrInvalidArgument)
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: base64: %v: %w", name, err, errdefs.ErrInvalidArgument)
	}
	return b, nil
}

// initdataPolicy decodes base64 gzip TOML initdata, the CoCo format with
// version, algorithm and a data table.
func initdataPolicy(v string) (*PolicyInput, error) {
	gz, err := decodeBase64(AnnotationInitdata, v)
	if err != nil {
		return nil, err
	}
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil {
		return nil, fmt.Errorf("annotation %s: gzip: %v: %w", AnnotationInitdata, err, errdefs.ErrInvalidArgument)
	}
	doc, err := io.ReadAll(io.LimitReader(zr, maxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("annotation %s: gzip: %v: %w", AnnotationInitdata, err, errdefs.ErrInvalidArgument)
	}
	if len(doc) > maxPolicySize {
		return nil, fmt.Errorf("annotation %s: document larger than %d bytes: %w", AnnotationInitdata, maxPolicySize, errdefs.ErrInvalidArgument)
	}
	var hdr struct {
		Version   string            `toml:"version"`
		Algorithm string            `toml:"algorithm"`
		Data      map[string]string `toml:"data"`
	}
	if err := toml.Unmarshal(doc, &hdr); err != nil {
		return nil, fmt.Errorf("annotation %s: toml: %v: %w", AnnotationInitdata, err, errdefs.ErrInvalidArgument)
	}
	if hdr.Version == "" {
		return nil, fmt.Errorf("annotation %s: no version: %w", AnnotationInitdata, errdefs.ErrInvalidArgument)
	}
	var h hash.Hash
	switch hdr.Algorithm {
	case "sha256":
		h = sha256.New()
	case "sha384":
		h = sha512.New384()
	case "sha512":
		h = sha512.New()
	default:
		return nil, fmt.Errorf("annotation %s: algorithm %q: want sha256, sha384 or sha512: %w", AnnotationInitdata, hdr.Algorithm, errdefs.ErrInvalidArgument)
	}
	h.Write(doc)
	in := &PolicyInput{Document: string(doc)}
	copy(in.HostData[:], h.Sum(nil))
	return in, nil
}
