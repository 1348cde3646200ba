// Package policytest helps the tests of components that sit behind the
// agent policy: generated Kata-style policies covering every AgentService
// entry point, and a HOST_DATA source standing in for the SNP report.
package policytest

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// Entries returns the policy entry point of every AgentService method (the
// request message names), sorted, each once.
func Entries() []string {
	seen := map[string]bool{}
	svc := agentpb.File_agent_proto.Services().ByName("AgentService")
	for i := 0; i < svc.Methods().Len(); i++ {
		seen[string(svc.Methods().Get(i).Input().Name())] = true
	}
	out := make([]string, 0, len(seen))
	for e := range seen {
		out = append(out, e)
	}
	sort.Strings(out)
	return out
}

// Policy returns a policy with a boolean default for every entry point:
// allow for all of them except the entries named in except, which get the
// opposite. Policy(true) allows everything, Policy(false,
// "SetPolicyRequest") is the confidential image's allow-only-SetPolicy.
func Policy(allow bool, except ...string) string {
	flip := map[string]bool{}
	for _, e := range except {
		flip[e] = true
	}
	var b strings.Builder
	b.WriteString("package agent_policy\n\n")
	for _, e := range Entries() {
		fmt.Fprintf(&b, "default %s := %t\n", e, allow != flip[e])
	}
	return b.String()
}

// WriteFile writes a policy into a fresh temporary directory of t and
// returns its path, e.g. for policy.Options.DefaultPolicyPath.
func WriteFile(t testing.TB, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.rego")
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// Bind returns the HOST_DATA that binds a policy: sha256 of its text.
func Bind(text string) []byte {
	sum := sha256.Sum256([]byte(text))
	return sum[:]
}

// HostData is a HOST_DATA source (policy.HostDataSource) for tests: a
// confidential guest whose report carries the given bytes.
type HostData struct {
	mu   sync.Mutex
	data []byte
	err  error
}

// NewHostData returns a source reporting data.
func NewHostData(data []byte) *HostData {
	return &HostData{data: append([]byte(nil), data...)}
}

// Set changes the reported HOST_DATA and clears a failure.
func (h *HostData) Set(data []byte) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.data, h.err = append([]byte(nil), data...), nil
}

// Fail makes the next reports fail with err, as a broken SNP device would.
func (h *HostData) Fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.err = err
}

// HostData implements policy.HostDataSource.
func (h *HostData) HostData(context.Context) ([]byte, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return nil, h.err
	}
	return append([]byte(nil), h.data...), nil
}
