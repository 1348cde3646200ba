// Package rootfs builds the guest image set that an SNP launch measures: an
// initrd with the agent as /init and the kernel modules it loads, an
// optional dm-verity protected root filesystem image, and a manifest with
// the digests of every input and output and the reference values a KBS
// needs.
package rootfs

import (
	"crypto/sha256"
	"crypto/sha512"
	"embed"
	"strings"
)

//go:embed policies/*.rego
var policies embed.FS

// AllowAllPolicy is the development image's default policy.
func AllowAllPolicy() []byte {
	b, _ := policies.ReadFile("policies/allow-all.rego")
	return b
}

// AllowOnlySetPolicy is the confidential image's default policy: only
// SetPolicy passes until the pod's policy is installed.
func AllowOnlySetPolicy() []byte {
	b, _ := policies.ReadFile("policies/allow-only-setpolicy.rego")
	return b
}

const measurementDomain = "cocoon-simulated-measurement-v1\x00"

// SimulatedMeasurement is the MEASUREMENT our launchers put into simulated
// SNP reports: SHA-384 over a domain string, the kernel's and the initrd's
// SHA-256 and the SHA-256 of the base kernel command line (the command line
// without any cocoon.sim_* parameter, which carry the simulated values).
func SimulatedMeasurement(kernelSHA256, initrdSHA256 [32]byte, cmdline string) [48]byte {
	h := sha512.New384()
	h.Write([]byte(measurementDomain))
	h.Write(kernelSHA256[:])
	h.Write(initrdSHA256[:])
	c := sha256.Sum256([]byte(BaseCmdline(cmdline)))
	h.Write(c[:])
	var out [48]byte
	copy(out[:], h.Sum(nil))
	return out
}

// SimulatedAttestationParam is what a launcher appends to the command line
// of a simulated-SNP guest; it is part of the measured command line.
const SimulatedAttestationParam = "cocoon.attestation=simulated"

// BaseCmdline drops the cocoon.sim_* parameters and normalizes spacing.
func BaseCmdline(cmdline string) string {
	var keep []string
	for _, f := range strings.Fields(cmdline) {
		if strings.HasPrefix(f, "cocoon.sim_") {
			continue
		}
		keep = append(keep, f)
	}
	return strings.Join(keep, " ")
}

// PolicyHostData is the HOST_DATA that binds a policy: its SHA-256.
func PolicyHostData(policy []byte) [32]byte { return sha256.Sum256(policy) }
