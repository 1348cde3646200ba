package attestation

import (
	"encoding/binary"
	"encoding/json"
	"fmt"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"
)

// Trustee's "snp" evidence is JSON: {"attestation_report": {...},
// "cert_chain": [{"cert_type": "VCEK", "data": [...]}, ...]}, where the report
// uses the field names of the virtee sev crate's AttestationReport (serde)
// and byte arrays are arrays of numbers.

type fieldKind int

const (
	kU8 fieldKind = iota
	kU32
	kU64
	kBytes
	kTCB
	kSig
)

type reportField struct {
	name string
	off  int
	size int
	kind fieldKind
}

// reportFields lays out ATTESTATION_REPORT (versions 2 and 3) under the
// virtee/Trustee names. Together the entries cover all 1184 bytes.
var reportFields = []reportField{
	{"version", 0x00, 4, kU32},
	{"guest_svn", 0x04, 4, kU32},
	{"policy", 0x08, 8, kU64},
	{"family_id", 0x10, 16, kBytes},
	{"image_id", 0x20, 16, kBytes},
	{"vmpl", 0x30, 4, kU32},
	{"sig_algo", 0x34, 4, kU32},
	{"current_tcb", 0x38, 8, kTCB},
	{"plat_info", 0x40, 8, kU64},
	{"_author_key_en", 0x48, 4, kU32},
	{"_reserved_0", 0x4C, 4, kU32},
	{"report_data", 0x50, 64, kBytes},
	{"measurement", 0x90, 48, kBytes},
	{"host_data", 0xC0, 32, kBytes},
	{"id_key_digest", 0xE0, 48, kBytes},
	{"author_key_digest", 0x110, 48, kBytes},
	{"report_id", 0x140, 32, kBytes},
	{"report_id_ma", 0x160, 32, kBytes},
	{"reported_tcb", 0x180, 8, kTCB},
	{"_reserved_1", 0x188, 24, kBytes},
	{"chip_id", 0x1A0, 64, kBytes},
	{"committed_tcb", 0x1E0, 8, kTCB},
	{"current_build", 0x1E8, 1, kU8},
	{"current_minor", 0x1E9, 1, kU8},
	{"current_major", 0x1EA, 1, kU8},
	{"_reserved_2", 0x1EB, 1, kU8},
	{"committed_build", 0x1EC, 1, kU8},
	{"committed_minor", 0x1ED, 1, kU8},
	{"committed_major", 0x1EE, 1, kU8},
	{"_reserved_3", 0x1EF, 1, kU8},
	{"launch_tcb", 0x1F0, 8, kTCB},
	{"_reserved_4", 0x1F8, 168, kBytes},
	{"signature", 0x2A0, 512, kSig},
}

// tcbJSON is a TCB_VERSION (Milan/Genoa layout). Reserved bytes 2..5 travel
// in _reserved so that the report round-trips exactly.
type tcbJSON struct {
	Bootloader uint8   `json:"bootloader"`
	TEE        uint8   `json:"tee"`
	Reserved   []uint8 `json:"_reserved"`
	SNP        uint8   `json:"snp"`
	Microcode  uint8   `json:"microcode"`
}

type sigJSON struct {
	R        []uint16 `json:"r"`
	S        []uint16 `json:"s"`
	Reserved []uint16 `json:"_reserved"`
}

// Cert types Trustee uses in cert_chain.
var certTypeByGUID = map[string]string{
	abi.VcekGUID: "VCEK",
	abi.VlekGUID: "VLEK",
	abi.AskGUID:  "ASK",
	abi.ArkGUID:  "ARK",
	abi.AsvkGUID: "ASVK",
}

type certJSON struct {
	CertType string   `json:"cert_type"`
	Data     []uint16 `json:"data"`
}

type trusteeSNP struct {
	AttestationReport map[string]json.RawMessage `json:"attestation_report"`
	CertChain         []certJSON                 `json:"cert_chain"`
}

// numbers spells bytes as JSON numbers (a []byte would be base64).
func numbers(b []byte) []uint16 {
	out := make([]uint16, len(b))
	for i, v := range b {
		out[i] = uint16(v)
	}
	return out
}

func fromNumbers(name string, n []uint16, size int) ([]byte, error) {
	if size >= 0 && len(n) != size {
		return nil, fmt.Errorf("trustee snp evidence: %s has %d bytes, want %d", name, len(n), size)
	}
	out := make([]byte, len(n))
	for i, v := range n {
		if v > 255 {
			return nil, fmt.Errorf("trustee snp evidence: %s[%d] = %d is not a byte", name, i, v)
		}
		out[i] = byte(v)
	}
	return out, nil
}

// MarshalTrusteeSNP encodes evidence as Trustee's snp evidence JSON.
func MarshalTrusteeSNP(e *Evidence) ([]byte, error) {
	if err := CheckReport(e.Report); err != nil {
		return nil, err
	}
	r := e.Report
	rep := map[string]any{}
	for _, f := range reportFields {
		b := r[f.off : f.off+f.size]
		switch f.kind {
		case kU8:
			rep[f.name] = b[0]
		case kU32:
			rep[f.name] = binary.LittleEndian.Uint32(b)
		case kU64:
			rep[f.name] = binary.LittleEndian.Uint64(b)
		case kBytes:
			rep[f.name] = numbers(b)
		case kTCB:
			rep[f.name] = tcbJSON{Bootloader: b[0], TEE: b[1], Reserved: append([]uint8{}, b[2:6]...), SNP: b[6], Microcode: b[7]}
		case kSig:
			rep[f.name] = sigJSON{R: numbers(b[0:72]), S: numbers(b[72:144]), Reserved: numbers(b[144:512])}
		}
	}
	out := map[string]any{"attestation_report": rep, "cert_chain": []certJSON{}}
	if len(e.CertTable) > 0 {
		chain, err := parseCertTable(e.CertTable)
		if err != nil {
			return nil, err
		}
		out["cert_chain"] = chain
	}
	return json.Marshal(out)
}

func parseCertTable(table []byte) ([]certJSON, error) {
	if len(table) > maxCertTableBytes {
		return nil, fmt.Errorf("certificate table of %d bytes: at most %d", len(table), maxCertTableBytes)
	}
	var ct abi.CertTable
	if err := ct.Unmarshal(table); err != nil {
		return nil, fmt.Errorf("certificate table: %w", err)
	}
	var chain []certJSON
	for _, ent := range ct.Entries {
		typ, ok := certTypeByGUID[ent.GUID.String()]
		if !ok || len(ent.RawCert) == 0 {
			continue
		}
		chain = append(chain, certJSON{CertType: typ, Data: numbers(ent.RawCert)})
	}
	return chain, nil
}

// ParseTrusteeSNP decodes Trustee's snp evidence JSON back into a raw
// report and certificate table.
func ParseTrusteeSNP(b []byte) (*Evidence, error) {
	if len(b) > 1<<20 {
		return nil, fmt.Errorf("trustee snp evidence of %d bytes: too large", len(b))
	}
	var t trusteeSNP
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("trustee snp evidence: %w", err)
	}
	if t.AttestationReport == nil {
		return nil, fmt.Errorf("trustee snp evidence: no attestation_report")
	}
	r := make([]byte, ReportSize)
	for _, f := range reportFields {
		raw, ok := t.AttestationReport[f.name]
		if !ok {
			return nil, fmt.Errorf("trustee snp evidence: attestation_report lacks %s", f.name)
		}
		dst := r[f.off : f.off+f.size]
		switch f.kind {
		case kU8:
			var v uint8
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, fmt.Errorf("trustee snp evidence: %s: %w", f.name, err)
			}
			dst[0] = v
		case kU32:
			var v uint32
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, fmt.Errorf("trustee snp evidence: %s: %w", f.name, err)
			}
			binary.LittleEndian.PutUint32(dst, v)
		case kU64:
			var v uint64
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, fmt.Errorf("trustee snp evidence: %s: %w", f.name, err)
			}
			binary.LittleEndian.PutUint64(dst, v)
		case kBytes:
			var n []uint16
			if err := json.Unmarshal(raw, &n); err != nil {
				return nil, fmt.Errorf("trustee snp evidence: %s: %w", f.name, err)
			}
			v, err := fromNumbers(f.name, n, f.size)
			if err != nil {
				return nil, err
			}
			copy(dst, v)
		case kTCB:
			var v tcbJSON
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, fmt.Errorf("trustee snp evidence: %s: %w", f.name, err)
			}
			dst[0], dst[1], dst[6], dst[7] = v.Bootloader, v.TEE, v.SNP, v.Microcode
			if len(v.Reserved) == 4 {
				copy(dst[2:6], v.Reserved)
			}
		case kSig:
			var v sigJSON
			if err := json.Unmarshal(raw, &v); err != nil {
				return nil, fmt.Errorf("trustee snp evidence: %s: %w", f.name, err)
			}
			rb, err := fromNumbers("signature.r", v.R, 72)
			if err != nil {
				return nil, err
			}
			sb, err := fromNumbers("signature.s", v.S, 72)
			if err != nil {
				return nil, err
			}
			copy(dst[0:72], rb)
			copy(dst[72:144], sb)
			if v.Reserved != nil {
				res, err := fromNumbers("signature._reserved", v.Reserved, 368)
				if err != nil {
					return nil, err
				}
				copy(dst[144:], res)
			}
		}
	}
	e := &Evidence{Report: r}
	if len(t.CertChain) > 0 {
		table, err := buildCertTable(t.CertChain)
		if err != nil {
			return nil, err
		}
		e.CertTable = table
	}
	return e, nil
}

// buildCertTable writes AMD's GUID table: entries of (GUID, offset, length),
// a zero terminator entry, then the certificates.
func buildCertTable(chain []certJSON) ([]byte, error) {
	guidByType := map[string]string{}
	for g, t := range certTypeByGUID {
		guidByType[t] = g
	}
	if len(chain) > 16 {
		return nil, fmt.Errorf("trustee snp evidence: %d certificates: too many", len(chain))
	}
	const entrySize = abi.CertTableEntrySize
	offset := (len(chain) + 1) * entrySize
	var header, body []byte
	for _, c := range chain {
		g, ok := guidByType[c.CertType]
		if !ok {
			return nil, fmt.Errorf("trustee snp evidence: unknown cert_type %q", c.CertType)
		}
		data, err := fromNumbers("cert_chain data", c.Data, -1)
		if err != nil {
			return nil, err
		}
		if len(data) == 0 || len(data) > 16<<10 {
			return nil, fmt.Errorf("trustee snp evidence: %s certificate of %d bytes", c.CertType, len(data))
		}
		id := uuid.MustParse(g)
		ent := make([]byte, entrySize)
		copy(ent[0:16], id[:])
		binary.LittleEndian.PutUint32(ent[16:], uint32(offset+len(body)))
		binary.LittleEndian.PutUint32(ent[20:], uint32(len(data)))
		header = append(header, ent...)
		body = append(body, data...)
	}
	header = append(header, make([]byte, entrySize)...)
	return append(header, body...), nil
}
