package attestation_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"testing"

	"github.com/google/go-sev-guest/abi"
	sevtest "github.com/google/go-sev-guest/testing"

	"github.com/cocoon-containers/cocoon/attestation"
	"github.com/cocoon-containers/cocoon/attestation/simulated"
)

var hardware = flag.Bool("cocoon.snp-hardware", false, "run the tests that need /dev/sev-guest")

func fill(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

func evidence(t testing.TB, o simulated.Options, rd [64]byte) *attestation.Evidence {
	t.Helper()
	p, err := simulated.New(o)
	if err != nil {
		t.Fatal(err)
	}
	e, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func baseOptions() simulated.Options {
	var o simulated.Options
	copy(o.HostData[:], fill(32, 0xAA))
	copy(o.Measurement[:], fill(48, 0xBB))
	o.ReportedTCB = 0x0800000000000503 // bootloader 3, tee 5, microcode 8
	return o
}

func TestSimulatedARKFingerprint(t *testing.T) {
	spki, err := x509.MarshalPKIXPublicKey(&sevtest.DefaultArk().PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(spki)
	if got := hex.EncodeToString(sum[:]); got != attestation.SimulatedARKFingerprint {
		t.Fatalf("test ARK fingerprint = %s, constant says %s", got, attestation.SimulatedARKFingerprint)
	}
}

func TestVerifySimulated(t *testing.T) {
	var rd [64]byte
	copy(rd[:], "nonce-binding")
	e := evidence(t, baseOptions(), rd)
	var hd [32]byte
	copy(hd[:], fill(32, 0xAA))
	claims, err := attestation.Verify(context.Background(), e, attestation.VerifyOptions{
		ReportData: &rd, HostData: &hd, Measurements: [][]byte{fill(48, 0x01), fill(48, 0xBB)},
		MinimumTCB: attestation.TCB{Bootloader: 3, TEE: 5, Microcode: 8}, TrustSimulated: true,
	})
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if got, want := claims.Measurement, hex.EncodeToString(fill(48, 0xBB)); got != want {
		t.Errorf("measurement = %s, want %s", got, want)
	}
	if got, want := claims.HostData, hex.EncodeToString(hd[:]); got != want {
		t.Errorf("host data = %s, want %s", got, want)
	}
	if !claims.Simulated || claims.Policy.Debug || claims.VMPL != 0 {
		t.Errorf("claims = %+v", claims)
	}
	if claims.ReportedTCB != (attestation.TCB{Bootloader: 3, TEE: 5, Microcode: 8}) {
		t.Errorf("reported TCB = %v", claims.ReportedTCB)
	}
	b, err := json.Marshal(claims)
	if err != nil || !bytes.Contains(b, []byte(`"host_data":"aaaa`)) {
		t.Errorf("claims JSON = %s, %v", b, err)
	}
}

func TestSimulatedNeedsExplicitTrust(t *testing.T) {
	e := evidence(t, baseOptions(), [64]byte{})
	_, err := attestation.Verify(context.Background(), e, attestation.VerifyOptions{})
	if !errors.Is(err, attestation.ErrSignature) {
		t.Fatalf("Verify without TrustSimulated = %v, want ErrSignature", err)
	}
}

func TestVerifyRejections(t *testing.T) {
	ctx := context.Background()
	var rd [64]byte
	copy(rd[:], "expected")
	trust := func(o attestation.VerifyOptions) attestation.VerifyOptions { o.TrustSimulated = true; return o }

	debugPolicy := abi.SnpPolicy{SMT: true, Debug: true}
	vmpl1 := baseOptions()
	vmpl1.VMPL = 1
	debug := baseOptions()
	debug.Policy = &debugPolicy
	otherChip := baseOptions()
	otherChip.ChipID[0] = 7

	flipped := evidence(t, baseOptions(), rd)
	flipped.Report[0x90] ^= 1 // one signed byte of MEASUREMENT

	otherRoot := evidence(t, baseOptions(), rd)
	otherRoot.CertTable = swapARK(t, otherRoot.CertTable)

	// A report of chip 7 presented with the VCEK of chip 0.
	foreignVCEK := evidence(t, otherChip, rd)
	foreignVCEK.CertTable = evidence(t, baseOptions(), rd).CertTable

	var wrongHD [32]byte
	tests := []struct {
		name string
		e    *attestation.Evidence
		opts attestation.VerifyOptions
		want error
	}{
		{"flipped signed byte", flipped, trust(attestation.VerifyOptions{}), attestation.ErrSignature},
		{"wrong REPORT_DATA", evidence(t, baseOptions(), [64]byte{1}), trust(attestation.VerifyOptions{ReportData: &rd}), attestation.ErrReportData},
		{"wrong HOST_DATA", evidence(t, baseOptions(), rd), trust(attestation.VerifyOptions{HostData: &wrongHD}), attestation.ErrHostData},
		{"unknown MEASUREMENT", evidence(t, baseOptions(), rd), trust(attestation.VerifyOptions{Measurements: [][]byte{fill(48, 1)}}), attestation.ErrMeasurement},
		{"debug policy", evidence(t, debug, rd), trust(attestation.VerifyOptions{}), attestation.ErrDebug},
		{"VMPL 1", evidence(t, vmpl1, rd), trust(attestation.VerifyOptions{}), attestation.ErrVMPL},
		{"TCB below minimum", evidence(t, baseOptions(), rd), trust(attestation.VerifyOptions{MinimumTCB: attestation.TCB{SNP: 9}}), attestation.ErrTCB},
		{"chip not allowed", evidence(t, baseOptions(), rd), trust(attestation.VerifyOptions{ChipIDs: [][]byte{fill(64, 9)}}), attestation.ErrChipID},
		{"chain to another root", otherRoot, trust(attestation.VerifyOptions{}), attestation.ErrSignature},
		{"VCEK for another chip", foreignVCEK, trust(attestation.VerifyOptions{}), attestation.ErrForeignVCEK},
		{"short report", &attestation.Evidence{Report: make([]byte, 100)}, trust(attestation.VerifyOptions{}), attestation.ErrMalformed},
		{"garbage cert table", &attestation.Evidence{Report: evidence(t, baseOptions(), rd).Report, CertTable: fill(100, 0xFF)}, trust(attestation.VerifyOptions{}), attestation.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			claims, err := attestation.Verify(ctx, tt.e, tt.opts)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %+v, %v; want %v", claims, err, tt.want)
			}
		})
	}
}

// swapARK replaces the ARK in a certificate table with the ASK, so the
// chain ends in a root nobody trusts.
func swapARK(t *testing.T, table []byte) []byte {
	t.Helper()
	var ct abi.CertTable
	if err := ct.Unmarshal(table); err != nil {
		t.Fatal(err)
	}
	out := append([]byte(nil), table...)
	var ask []byte
	for _, e := range ct.Entries {
		if e.GUID.String() == abi.AskGUID {
			ask = e.RawCert
		}
	}
	for i := 0; ; i += abi.CertTableEntrySize {
		var h abi.CertTableHeaderEntry
		if err := h.Unmarshal(out[i:]); err != nil {
			t.Fatal(err)
		}
		if h.GUID.String() == abi.ArkGUID {
			// Point the ARK entry at the ASK's bytes.
			off := bytes.Index(out, ask)
			binary.LittleEndian.PutUint32(out[i+16:], uint32(off))
			binary.LittleEndian.PutUint32(out[i+20:], uint32(len(ask)))
			return out
		}
	}
}

func TestTrusteeRoundTrip(t *testing.T) {
	var rd [64]byte
	copy(rd[:], "round trip")
	e := evidence(t, baseOptions(), rd)
	j, err := attestation.MarshalTrusteeSNP(e)
	if err != nil {
		t.Fatal(err)
	}
	var shape struct {
		Report map[string]json.RawMessage `json:"attestation_report"`
		Chain  []struct {
			CertType string `json:"cert_type"`
			Data     []int  `json:"data"`
		} `json:"cert_chain"`
	}
	if err := json.Unmarshal(j, &shape); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"version", "policy", "report_data", "measurement", "host_data", "chip_id", "reported_tcb", "signature", "vmpl"} {
		if _, ok := shape.Report[f]; !ok {
			t.Errorf("attestation_report lacks %s", f)
		}
	}
	types := map[string]bool{}
	for _, c := range shape.Chain {
		types[c.CertType] = len(c.Data) > 0
	}
	for _, want := range []string{"VCEK", "ASK", "ARK"} {
		if !types[want] {
			t.Errorf("cert_chain lacks %s: %v", want, types)
		}
	}
	back, err := attestation.ParseTrusteeSNP(j)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Report, e.Report) {
		t.Fatal("report changed in the round trip")
	}
	// The reassembled certificate table verifies just like the original.
	if _, err := attestation.Verify(context.Background(), back, attestation.VerifyOptions{ReportData: &rd, TrustSimulated: true}); err != nil {
		t.Fatalf("Verify after round trip: %v", err)
	}
}

func TestTrusteeParseRejects(t *testing.T) {
	e := evidence(t, baseOptions(), [64]byte{})
	good, _ := attestation.MarshalTrusteeSNP(e)
	var m map[string]any
	json.Unmarshal(good, &m)
	rep := m["attestation_report"].(map[string]any)
	mutate := func(f func()) []byte {
		json.Unmarshal(good, &m)
		rep = m["attestation_report"].(map[string]any)
		f()
		b, _ := json.Marshal(m)
		return b
	}
	tests := map[string][]byte{
		"not json":        []byte("{"),
		"no report":       []byte(`{"cert_chain":[]}`),
		"missing field":   mutate(func() { delete(rep, "host_data") }),
		"short host_data": mutate(func() { rep["host_data"] = []int{1, 2} }),
		"non-byte value":  mutate(func() { rep["measurement"] = append(make([]any, 47), 300) }),
		"unknown cert":    mutate(func() { m["cert_chain"] = []any{map[string]any{"cert_type": "XYZ", "data": []int{1}}} }),
	}
	for name, in := range tests {
		if _, err := attestation.ParseTrusteeSNP(in); err == nil {
			t.Errorf("%s: parse succeeded, want an error", name)
		}
	}
}

func TestHostDataHelpers(t *testing.T) {
	p, err := simulated.New(baseOptions())
	if err != nil {
		t.Fatal(err)
	}
	hd, err := attestation.HostData(context.Background(), p)
	if err != nil || !bytes.Equal(hd, fill(32, 0xAA)) {
		t.Fatalf("HostData = %x, %v", hd, err)
	}
	m, err := attestation.Measurement(context.Background(), p)
	if err != nil || !bytes.Equal(m, fill(48, 0xBB)) {
		t.Fatalf("Measurement = %x, %v", m, err)
	}
	if _, err := attestation.BindReportData(make([]byte, 65)); err == nil {
		t.Fatal("BindReportData accepted 65 bytes")
	}
}

func TestOptionsFromCmdline(t *testing.T) {
	o, err := simulated.OptionsFromCmdline(map[string]string{
		simulated.CmdlineHostData:    hex.EncodeToString(fill(32, 3)),
		simulated.CmdlineMeasurement: hex.EncodeToString(fill(48, 4)),
	})
	if err != nil || o.HostData[0] != 3 || o.Measurement[47] != 4 {
		t.Fatalf("OptionsFromCmdline = %+v, %v", o, err)
	}
	if _, err := simulated.OptionsFromCmdline(map[string]string{simulated.CmdlineHostData: "abcd"}); err == nil {
		t.Fatal("short host data accepted")
	}
}

func TestHardwareProvider(t *testing.T) {
	if !*hardware {
		t.Skip("real SNP tests need -cocoon.snp-hardware")
	}
	if _, err := os.Stat("/dev/sev-guest"); err != nil {
		t.Skipf("no /dev/sev-guest: %v", err)
	}
	p, err := attestation.NewHardwareProvider()
	if err != nil {
		t.Fatal(err)
	}
	var rd [64]byte
	copy(rd[:], "hardware")
	e, err := p.GetEvidence(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attestation.Verify(context.Background(), e, attestation.VerifyOptions{ReportData: &rd, Getter: nil}); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseTrusteeSNP(f *testing.F) {
	e := evidence(f, baseOptions(), [64]byte{})
	good, _ := attestation.MarshalTrusteeSNP(e)
	f.Add(good)
	f.Add([]byte(`{"attestation_report":{},"cert_chain":null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := attestation.ParseTrusteeSNP(b)
		if err != nil {
			return
		}
		if len(ev.Report) != attestation.ReportSize {
			t.Fatalf("parsed a report of %d bytes", len(ev.Report))
		}
		if _, err := attestation.MarshalTrusteeSNP(ev); err != nil && len(ev.CertTable) == 0 {
			t.Fatalf("re-marshal: %v", err)
		}
	})
}

func FuzzCertTable(f *testing.F) {
	e := evidence(f, baseOptions(), [64]byte{})
	f.Add(e.CertTable)
	f.Add(fill(48, 0))
	report := e.Report
	f.Fuzz(func(t *testing.T, table []byte) {
		// Must fail cleanly or verify; never panic.
		attestation.Verify(context.Background(), &attestation.Evidence{Report: report, CertTable: table}, attestation.VerifyOptions{TrustSimulated: true})
	})
}

func TestProtoRoundTrip(t *testing.T) {
	e := evidence(t, baseOptions(), [64]byte{5})
	att, err := attestation.ToProto(e)
	if err != nil {
		t.Fatal(err)
	}
	back, err := attestation.FromProto(att)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(back.Report, e.Report) {
		t.Fatal("report changed through the protobuf")
	}
	// Trustee JSON made from the protobuf's evidence verifies too.
	j, err := attestation.MarshalTrusteeSNP(back)
	if err != nil {
		t.Fatal(err)
	}
	fromJSON, err := attestation.ParseTrusteeSNP(j)
	if err != nil {
		t.Fatal(err)
	}
	rd := [64]byte{5}
	if _, err := attestation.Verify(context.Background(), fromJSON, attestation.VerifyOptions{ReportData: &rd, TrustSimulated: true}); err != nil {
		t.Fatalf("Verify of protobuf -> Trustee JSON evidence: %v", err)
	}
}
