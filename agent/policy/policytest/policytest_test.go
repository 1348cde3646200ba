package policytest_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cocoon-containers/cocoon/agent/policy"
	"github.com/cocoon-containers/cocoon/agent/policy/policytest"
	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

func TestEntries(t *testing.T) {
	got := policytest.Entries()
	if len(got) != 41 {
		t.Fatalf("%d entries, want 41", len(got))
	}
	for _, e := range got {
		if _, ok := policy.EntryPoint("/grpc.AgentService/" + methodOf(t, e)); !ok {
			t.Errorf("entry %s has no AgentService method", e)
		}
	}
}

func methodOf(t *testing.T, entry string) string {
	svc := agentpb.File_agent_proto.Services().ByName("AgentService")
	for i := 0; i < svc.Methods().Len(); i++ {
		if m := svc.Methods().Get(i); string(m.Input().Name()) == entry {
			return string(m.Name())
		}
	}
	t.Fatalf("no method for %s", entry)
	return ""
}

func TestPolicyAndBinding(t *testing.T) {
	ctx := context.Background()
	allowAll := policytest.Policy(true)
	onlySet := policytest.Policy(false, "SetPolicyRequest")
	hd := policytest.NewHostData(policytest.Bind(allowAll))
	e, err := policy.NewEnforcer(ctx, policy.Options{
		DefaultPolicyPath: policytest.WriteFile(t, onlySet),
		Binding:           hd,
		Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	if ok, digest := e.Loaded(); !ok || digest == "" {
		t.Fatal("generated default policy not loaded")
	}
	if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: onlySet + "\n"}); !errors.Is(err, errdefs.ErrPermissionDenied) {
		t.Fatalf("unbound policy = %v, want PermissionDenied", err)
	}
	hd.Fail(errors.New("no report"))
	if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: allowAll}); err == nil {
		t.Fatal("SetPolicy succeeded without a report")
	}
	hd.Set(policytest.Bind(allowAll))
	if err := e.SetPolicy(ctx, &agentpb.SetPolicyRequest{Policy: allowAll}); err != nil {
		t.Fatalf("bound policy: %v", err)
	}
}

func TestPolicyDecisions(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name    string
		text    string
		allowed func(entry string) bool
	}{
		{"allow all", policytest.Policy(true), func(string) bool { return true }},
		{"only SetPolicy", policytest.Policy(false, "SetPolicyRequest"), func(e string) bool { return e == "SetPolicyRequest" }},
		{"all but exec", policytest.Policy(true, "ExecProcessRequest"), func(e string) bool { return e != "ExecProcessRequest" }},
	} {
		e, err := policy.NewEnforcer(ctx, policy.Options{
			DefaultPolicyPath: policytest.WriteFile(t, tt.text),
			Logger:            slog.New(slog.NewTextHandler(io.Discard, nil)),
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, entry := range policytest.Entries() {
			d, err := e.Evaluate(ctx, entry, map[string]any{})
			if err != nil {
				t.Fatalf("%s: %s: %v", tt.name, entry, err)
			}
			if want := tt.allowed(entry); d.Allowed != want {
				t.Errorf("%s: %s allowed = %v, want %v", tt.name, entry, d.Allowed, want)
			}
		}
	}
}
