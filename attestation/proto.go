package attestation

import (
	"fmt"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
)

// ToProto converts evidence to go-sev-guest's Attestation protobuf.
func ToProto(e *Evidence) (*spb.Attestation, error) {
	if err := CheckReport(e.Report); err != nil {
		return nil, err
	}
	r, err := abi.ReportToProto(e.Report)
	if err != nil {
		return nil, fmt.Errorf("decode SNP report: %w", err)
	}
	att := &spb.Attestation{Report: r, CertificateChain: &spb.CertificateChain{}}
	if len(e.CertTable) > 0 {
		if len(e.CertTable) > maxCertTableBytes {
			return nil, fmt.Errorf("certificate table of %d bytes: at most %d", len(e.CertTable), maxCertTableBytes)
		}
		var ct abi.CertTable
		if err := ct.Unmarshal(e.CertTable); err != nil {
			return nil, fmt.Errorf("certificate table: %w", err)
		}
		att.CertificateChain = ct.Proto()
	}
	return att, nil
}

// FromProto converts go-sev-guest's Attestation protobuf back to evidence.
func FromProto(att *spb.Attestation) (*Evidence, error) {
	if att.GetReport() == nil {
		return nil, fmt.Errorf("attestation has no report")
	}
	raw, err := abi.ReportToAbiBytes(att.GetReport())
	if err != nil {
		return nil, fmt.Errorf("encode SNP report: %w", err)
	}
	e := &Evidence{Report: raw}
	if c := att.GetCertificateChain(); c != nil && (len(c.VcekCert) > 0 || len(c.AskCert) > 0 || len(c.ArkCert) > 0 || len(c.VlekCert) > 0) {
		e.CertTable = abi.CertsFromProto(c).Marshal()
	}
	return e, nil
}
