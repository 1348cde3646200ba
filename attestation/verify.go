package attestation

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/validate"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"
)

// SimulatedARKFingerprint is the SHA-256 of the SubjectPublicKeyInfo of
// go-sev-guest's test-only ARK key, the root of simulated reports. Only the
// fingerprint lives here: production binaries never link the test keys.
const SimulatedARKFingerprint = "686a27cee8debf56a4cf2ae07b2835b5440f7761ea14d05d3326155c0392a892"

// Errors of Verify. Each failed check wraps exactly one of these.
var (
	ErrMalformed        = errors.New("malformed evidence")
	ErrSignature        = errors.New("report signature or certificate chain invalid")
	ErrUntrustedRoot    = errors.New("certificate chain does not end in a trusted root")
	ErrReportData       = errors.New("REPORT_DATA mismatch")
	ErrHostData         = errors.New("HOST_DATA mismatch")
	ErrMeasurement      = errors.New("MEASUREMENT not allowed")
	ErrDebug            = errors.New("guest policy allows debugging")
	ErrVMPL             = errors.New("report not from VMPL 0")
	ErrTCB              = errors.New("TCB below minimum")
	ErrChipID           = errors.New("CHIP_ID not allowed")
	ErrForeignVCEK      = errors.New("VCEK certificate is for another chip")
	ErrPolicyValidation = errors.New("report fails validation")
)

// TCB is a TCB_VERSION's components.
type TCB struct {
	Bootloader uint8 `json:"bootloader"`
	TEE        uint8 `json:"tee"`
	SNP        uint8 `json:"snp"`
	Microcode  uint8 `json:"microcode"`
}

func (t TCB) String() string {
	return fmt.Sprintf("bootloader=%d tee=%d snp=%d microcode=%d", t.Bootloader, t.TEE, t.SNP, t.Microcode)
}

func (t TCB) atLeast(min TCB) bool {
	return t.Bootloader >= min.Bootloader && t.TEE >= min.TEE && t.SNP >= min.SNP && t.Microcode >= min.Microcode
}

// VerifyOptions says what a relying party requires.
type VerifyOptions struct {
	ReportData *[64]byte
	HostData   *[32]byte
	// Measurements is an allow-list; empty allows any.
	Measurements [][]byte
	// ChipIDs is an allow-list; empty allows any.
	ChipIDs    [][]byte
	MinimumTCB TCB
	AllowDebug bool
	// TrustSimulated accepts reports chaining to the simulated (test-only)
	// AMD root instead of AMD's. Never set it in production.
	TrustSimulated bool
	// Getter fetches missing certificates from AMD KDS; nil disables fetching.
	Getter trust.HTTPSGetter
	// Now is the time for certificate validity (default: time.Now()).
	Now time.Time
	// TrustedRoots overrides the AMD roots (tests, private CAs).
	TrustedRoots map[string][]*trust.AMDRootCerts
}

// Claims are the verified facts of one report, JSON-tagged for Rego.
type Claims struct {
	Measurement  string `json:"measurement"`
	HostData     string `json:"host_data"`
	ReportData   string `json:"report_data"`
	ChipID       string `json:"chip_id"`
	ReportedTCB  TCB    `json:"reported_tcb"`
	CommittedTCB TCB    `json:"committed_tcb"`
	VMPL         uint32 `json:"vmpl"`
	GuestSVN     uint32 `json:"guest_svn"`
	Policy       struct {
		ABIMajor     uint8 `json:"abi_major"`
		ABIMinor     uint8 `json:"abi_minor"`
		SMT          bool  `json:"smt"`
		MigrateMA    bool  `json:"migrate_ma"`
		Debug        bool  `json:"debug"`
		SingleSocket bool  `json:"single_socket"`
	} `json:"policy"`
	Simulated bool `json:"simulated"`
}

func tcbOf(v uint64) TCB {
	p := kds.DecomposeTCBVersion(kds.TCBVersion(v))
	return TCB{Bootloader: p.BlSpl, TEE: p.TeeSpl, SNP: p.SnpSpl, Microcode: p.UcodeSpl}
}

// Verify checks the report's signature and certificate chain (go-sev-guest
// verify), then the relying party's requirements, and returns the claims.
func Verify(ctx context.Context, e *Evidence, opts VerifyOptions) (*Claims, error) {
	if e == nil {
		return nil, fmt.Errorf("%w: no evidence", ErrMalformed)
	}
	if err := CheckReport(e.Report); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	att, err := ToProto(e)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	report := att.Report
	vopts := &verify.Options{
		Getter:              opts.Getter,
		DisableCertFetching: opts.Getter == nil,
		Now:                 opts.Now,
		TrustedRoots:        opts.TrustedRoots,
	}
	if vopts.Now.IsZero() {
		vopts.Now = time.Now()
	}
	simulated := false
	if opts.TrustSimulated && opts.TrustedRoots == nil {
		roots, ok, err := simulatedRoots(att.CertificateChain)
		if err != nil {
			return nil, err
		}
		if ok {
			vopts.TrustedRoots = roots
			simulated = true
		}
	}
	if err := verify.SnpAttestationContext(ctx, att, vopts); err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %v", ErrSignature, err)
	}

	claims := &Claims{
		Measurement:  hex.EncodeToString(report.Measurement),
		HostData:     hex.EncodeToString(report.HostData),
		ReportData:   hex.EncodeToString(report.ReportData),
		ChipID:       hex.EncodeToString(report.ChipId),
		ReportedTCB:  tcbOf(report.ReportedTcb),
		CommittedTCB: tcbOf(report.CommittedTcb),
		VMPL:         report.Vmpl,
		GuestSVN:     report.GuestSvn,
		Simulated:    simulated,
	}
	pol, err := abi.ParseSnpPolicy(report.Policy)
	if err != nil {
		return nil, fmt.Errorf("%w: guest policy: %v", ErrMalformed, err)
	}
	claims.Policy.ABIMajor, claims.Policy.ABIMinor = pol.ABIMajor, pol.ABIMinor
	claims.Policy.SMT, claims.Policy.MigrateMA, claims.Policy.Debug, claims.Policy.SingleSocket = pol.SMT, pol.MigrateMA, pol.Debug, pol.SingleSocket

	if opts.ReportData != nil && !bytes.Equal(report.ReportData, opts.ReportData[:]) {
		return nil, fmt.Errorf("%w: got %s, want %x", ErrReportData, claims.ReportData, opts.ReportData[:])
	}
	if opts.HostData != nil && !bytes.Equal(report.HostData, opts.HostData[:]) {
		return nil, fmt.Errorf("%w: got %s, want %x", ErrHostData, claims.HostData, opts.HostData[:])
	}
	if len(opts.Measurements) > 0 && !contains(opts.Measurements, report.Measurement) {
		return nil, fmt.Errorf("%w: %s is not among the %d allowed", ErrMeasurement, claims.Measurement, len(opts.Measurements))
	}
	if pol.Debug && !opts.AllowDebug {
		return nil, fmt.Errorf("%w: policy %#x", ErrDebug, report.Policy)
	}
	if report.Vmpl != 0 {
		return nil, fmt.Errorf("%w: VMPL %d", ErrVMPL, report.Vmpl)
	}
	if !claims.ReportedTCB.atLeast(opts.MinimumTCB) {
		return nil, fmt.Errorf("%w: reported %s, minimum %s", ErrTCB, claims.ReportedTCB, opts.MinimumTCB)
	}
	if len(opts.ChipIDs) > 0 && !contains(opts.ChipIDs, report.ChipId) {
		return nil, fmt.Errorf("%w: %s", ErrChipID, claims.ChipID)
	}
	if len(att.CertificateChain.GetVcekCert()) > 0 {
		cert, err := x509.ParseCertificate(att.CertificateChain.GetVcekCert())
		if err != nil {
			return nil, fmt.Errorf("%w: VCEK: %v", ErrMalformed, err)
		}
		exts, err := kds.VcekCertificateExtensions(cert)
		if err != nil {
			return nil, fmt.Errorf("%w: VCEK extensions: %v", ErrMalformed, err)
		}
		if len(exts.HWID) > 0 && !bytes.Equal(exts.HWID, report.ChipId) {
			return nil, fmt.Errorf("%w: report CHIP_ID %s, VCEK hwID %x", ErrForeignVCEK, claims.ChipID, exts.HWID)
		}
	}
	// The remaining checks of go-sev-guest validate: policy consistency and
	// the TCB relations between the report and its certificate.
	vmpl := 0
	vo := &validate.Options{
		GuestPolicy:               abi.SnpPolicy{ABIMajor: 0, ABIMinor: 0, SMT: true, MigrateMA: true, Debug: opts.AllowDebug, SingleSocket: false},
		VMPL:                      &vmpl,
		PermitProvisionalFirmware: true,
	}
	if err := validate.SnpAttestation(att, vo); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPolicyValidation, err)
	}
	return claims, nil
}

func contains(list [][]byte, v []byte) bool {
	for _, x := range list {
		if bytes.Equal(x, v) {
			return true
		}
	}
	return false
}

// simulatedRoots returns the ARK and ASK of the evidence as trusted roots
// when the ARK's key is the simulated root's.
func simulatedRoots(chain *spb.CertificateChain) (map[string][]*trust.AMDRootCerts, bool, error) {
	if chain == nil || len(chain.ArkCert) == 0 || len(chain.AskCert) == 0 {
		return nil, false, nil
	}
	ark, err := x509.ParseCertificate(chain.ArkCert)
	if err != nil {
		return nil, false, fmt.Errorf("%w: ARK: %v", ErrMalformed, err)
	}
	spki, err := x509.MarshalPKIXPublicKey(ark.PublicKey)
	if err != nil {
		return nil, false, fmt.Errorf("%w: ARK key: %v", ErrMalformed, err)
	}
	sum := sha256.Sum256(spki)
	if hex.EncodeToString(sum[:]) != SimulatedARKFingerprint {
		return nil, false, nil
	}
	ask, err := x509.ParseCertificate(chain.AskCert)
	if err != nil {
		return nil, false, fmt.Errorf("%w: ASK: %v", ErrMalformed, err)
	}
	certs := &trust.ProductCerts{Ark: ark, Ask: ask, Asvk: ask}
	roots := map[string][]*trust.AMDRootCerts{}
	for _, line := range []string{"Milan", "Genoa", "Turin"} {
		roots[line] = []*trust.AMDRootCerts{{Product: line, ProductLine: line, ProductCerts: certs}}
	}
	return roots, true, nil
}
