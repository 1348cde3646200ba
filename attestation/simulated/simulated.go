// Package simulated serves signed SEV-SNP reports on machines without SNP.
// Reports are signed with go-sev-guest's test-only AMD key chain, so they
// verify only for a relying party that explicitly trusts that root
// (attestation.VerifyOptions.TrustSimulated). HOST_DATA and MEASUREMENT come
// from launch parameters: in a VM, the kernel command line our launcher sets
// (cocoon.sim_host_data, cocoon.sim_measurement).
//
// This package links go-sev-guest's testing package and its keys. Binaries
// import it only in files built with the "simulated" build tag.
package simulated

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"

	"github.com/cocoon-containers/cocoon/attestation"
)

// Options are the launch parameters a simulated report carries.
type Options struct {
	HostData    [32]byte
	Measurement [48]byte
	// Policy is the guest policy (default: SMT allowed, no debug, ABI 0.0).
	Policy *abi.SnpPolicy
	// VMPL of the reports (default 0).
	VMPL uint32
	// ReportedTCB of the reports (default 0).
	ReportedTCB uint64
	// ChipID of the reports (default zeros).
	ChipID [64]byte
}

// Command-line keys.
const (
	CmdlineHostData    = "cocoon.sim_host_data"
	CmdlineMeasurement = "cocoon.sim_measurement"
)

// OptionsFromCmdline reads the launch parameters from kernel command-line
// key/values; missing keys leave zeros.
func OptionsFromCmdline(kv map[string]string) (Options, error) {
	var o Options
	if v, ok := kv[CmdlineHostData]; ok {
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != len(o.HostData) {
			return o, fmt.Errorf("%s: want %d hex bytes", CmdlineHostData, len(o.HostData))
		}
		copy(o.HostData[:], b)
	}
	if v, ok := kv[CmdlineMeasurement]; ok {
		b, err := hex.DecodeString(v)
		if err != nil || len(b) != len(o.Measurement) {
			return o, fmt.Errorf("%s: want %d hex bytes", CmdlineMeasurement, len(o.Measurement))
		}
		copy(o.Measurement[:], b)
	}
	return o, nil
}

// Signers are built once per TCB: the VCEK certificate carries the TCB the
// reports claim, and the chain is deterministic in its keys.
var (
	signersMu sync.Mutex
	signers   = map[string]*chain{}
)

type chain struct {
	signer *sevtest.AmdSigner
	table  []byte
}

func testSigner(tcb uint64, chipID [64]byte) (*sevtest.AmdSigner, []byte, error) {
	signersMu.Lock()
	defer signersMu.Unlock()
	key := fmt.Sprintf("%x/%x", tcb, chipID)
	if c, ok := signers[key]; ok {
		return c.signer, c.table, nil
	}
	created := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	product := kds.ProductName(abi.DefaultSevProduct())
	b := &sevtest.AmdSignerBuilder{
		VcekCustom: sevtest.CertOverride{
			Extensions: sevtest.CustomExtensions(kds.DecomposeTCBVersion(kds.TCBVersion(tcb)), chipID[:], "cocoon-simulated", product),
		},
		Keys:             sevtest.DefaultAmdKeys(),
		ProductName:      product,
		CSPID:            "cocoon-simulated",
		ArkCreationTime:  created,
		AskCreationTime:  created,
		AsvkCreationTime: created,
		VcekCreationTime: created,
		VlekCreationTime: created,
		TCB:              kds.TCBVersion(tcb),
		HWID:             chipID,
	}
	s, err := b.TestOnlyCertChain()
	if err != nil {
		return nil, nil, err
	}
	table, err := s.CertTableBytes()
	if err != nil {
		return nil, nil, err
	}
	signers[key] = &chain{signer: s, table: table}
	return s, table, nil
}

type provider struct{ opts Options }

// New returns a provider of simulated, signed reports.
func New(opts Options) (attestation.Provider, error) {
	if _, _, err := testSigner(opts.ReportedTCB, opts.ChipID); err != nil {
		return nil, fmt.Errorf("simulated SNP signer: %w", err)
	}
	return &provider{opts: opts}, nil
}

func (p *provider) GetEvidence(ctx context.Context, reportData [64]byte) (*attestation.Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s, table, err := testSigner(p.opts.ReportedTCB, p.opts.ChipID)
	if err != nil {
		return nil, err
	}
	r := make([]byte, abi.ReportSize)
	binary.LittleEndian.PutUint32(r[0x00:], 2) // version
	pol := abi.SnpPolicy{SMT: true}
	if p.opts.Policy != nil {
		pol = *p.opts.Policy
	}
	binary.LittleEndian.PutUint64(r[0x08:], abi.SnpPolicyToBytes(pol))
	binary.LittleEndian.PutUint32(r[0x30:], p.opts.VMPL)
	binary.LittleEndian.PutUint32(r[0x34:], 1) // ECDSA P-384 with SHA-384
	binary.LittleEndian.PutUint64(r[0x38:], p.opts.ReportedTCB)
	copy(r[0x50:0x90], reportData[:])
	copy(r[0x90:0xC0], p.opts.Measurement[:])
	copy(r[0xC0:0xE0], p.opts.HostData[:])
	binary.LittleEndian.PutUint64(r[0x180:], p.opts.ReportedTCB)
	copy(r[0x1A0:0x1E0], p.opts.ChipID[:])
	binary.LittleEndian.PutUint64(r[0x1E0:], p.opts.ReportedTCB)
	binary.LittleEndian.PutUint64(r[0x1F0:], p.opts.ReportedTCB)
	rs, ss, err := s.Sign(abi.SignedComponent(r))
	if err != nil {
		return nil, fmt.Errorf("sign simulated report: %w", err)
	}
	if err := abi.SetSignature(rs, ss, r); err != nil {
		return nil, fmt.Errorf("sign simulated report: %w", err)
	}
	return &attestation.Evidence{Report: r, CertTable: append([]byte(nil), table...)}, nil
}
