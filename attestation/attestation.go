// Package attestation obtains AMD SEV-SNP evidence in the guest and verifies
// it for relying parties (the KBS, the agent's policy binding).
//
// Guest side: NewHardwareProvider reads reports through go-sev-guest's quote
// provider (configfs-tsm first, then /dev/sev-guest) at VMPL 0, with the
// certificate table the host supplies. The simulated provider in
// attestation/simulated signs reports with go-sev-guest's test-only AMD chain
// for machines without SNP; it is linked into binaries only with the build
// tag "simulated", and Verify accepts its reports only with TrustSimulated.
package attestation

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/client"
)

// Evidence is one SNP attestation report and its certificate table.
type Evidence struct {
	// Report is the raw 1184-byte ATTESTATION_REPORT.
	Report []byte
	// CertTable is the raw GUID table of certificates (VCEK/VLEK, ASK, ARK);
	// it may be empty, in which case the verifier fetches from AMD KDS.
	CertTable []byte
}

// Provider produces evidence binding reportData.
type Provider interface {
	GetEvidence(ctx context.Context, reportData [64]byte) (*Evidence, error)
}

// Offsets of the report fields the binding uses.
const (
	ReportSize        = abi.ReportSize
	offReportData     = 0x50
	offMeasurement    = 0x90
	offHostData       = 0xC0
	offChipID         = 0x1A0
	offVMPL           = 0x30
	offPolicy         = 0x08
	HostDataSize      = 32
	MeasurementSize   = 48
	ReportDataSize    = 64
	maxCertTableBytes = 64 << 10
)

// ErrNoSNP reports that the machine offers no SNP guest interface.
var ErrNoSNP = errors.New("no SEV-SNP guest device (configfs-tsm or /dev/sev-guest)")

type hardwareProvider struct {
	qp client.QuoteProvider
}

// NewHardwareProvider opens the SNP quote provider of this guest.
func NewHardwareProvider() (Provider, error) {
	qp, err := client.GetQuoteProvider()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNoSNP, err)
	}
	if !qp.IsSupported() {
		return nil, ErrNoSNP
	}
	return &hardwareProvider{qp: qp}, nil
}

func (p *hardwareProvider) GetEvidence(ctx context.Context, reportData [64]byte) (*Evidence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	raw, err := p.qp.GetRawQuote(reportData)
	if err != nil {
		return nil, fmt.Errorf("get SNP report: %w", err)
	}
	if len(raw) < ReportSize {
		return nil, fmt.Errorf("get SNP report: %d bytes, want at least %d", len(raw), ReportSize)
	}
	return &Evidence{Report: raw[:ReportSize], CertTable: raw[ReportSize:]}, nil
}

// CheckReport checks the report's size.
func CheckReport(report []byte) error {
	if len(report) != ReportSize {
		return fmt.Errorf("SNP report is %d bytes, want %d", len(report), ReportSize)
	}
	return nil
}

// ReportHostData returns the HOST_DATA field of a raw report.
func ReportHostData(report []byte) ([]byte, error) {
	if err := CheckReport(report); err != nil {
		return nil, err
	}
	return append([]byte(nil), report[offHostData:offHostData+HostDataSize]...), nil
}

// ReportMeasurement returns the MEASUREMENT field of a raw report.
func ReportMeasurement(report []byte) ([]byte, error) {
	if err := CheckReport(report); err != nil {
		return nil, err
	}
	return append([]byte(nil), report[offMeasurement:offMeasurement+MeasurementSize]...), nil
}

// HostData fetches a fresh report from p and returns its 32-byte HOST_DATA.
func HostData(ctx context.Context, p Provider) ([]byte, error) {
	e, err := p.GetEvidence(ctx, [64]byte{})
	if err != nil {
		return nil, err
	}
	return ReportHostData(e.Report)
}

// Measurement fetches a fresh report from p and returns its MEASUREMENT.
func Measurement(ctx context.Context, p Provider) ([]byte, error) {
	e, err := p.GetEvidence(ctx, [64]byte{})
	if err != nil {
		return nil, err
	}
	return ReportMeasurement(e.Report)
}

// BindReportData places data in a REPORT_DATA block: at most 64 bytes,
// zero-padded (e.g. a SHA-384 or SHA-512 digest).
func BindReportData(data []byte) ([64]byte, error) {
	var rd [64]byte
	if len(data) > len(rd) {
		return rd, fmt.Errorf("report data of %d bytes: at most 64", len(data))
	}
	copy(rd[:], data)
	return rd, nil
}

// HostDataSource adapts a Provider to the agent policy's binding interface.
type HostDataSource struct{ Provider Provider }

// HostData returns HOST_DATA from a fresh report.
func (s HostDataSource) HostData(ctx context.Context) ([]byte, error) {
	return HostData(ctx, s.Provider)
}
