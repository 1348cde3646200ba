// Package policy enforces the agent policy: every AgentService request from
// the (untrusted) host is checked by an OPA/Rego policy before it runs, with
// the semantics of the Kata Containers agent policy so that policies made by
// Kata's genpolicy work unchanged.
//
//   - Rego package agent_policy, compiled once per policy with the OPA Go
//     library: Rego v0 (plain or with future.keywords imports, what
//     genpolicy emits and upstream's engine assumes) or, when that fails,
//     Rego v1.
//   - The entry point is the request message name (CreateContainerRequest,
//     ReadStreamRequest for ReadStdout and ReadStderr, ...); the input is the
//     request in the Kata agent's JSON encoding (see Encode). CopyFile's
//     input is path, file_type (Regular, Directory, Symlink or Unknown),
//     symlink_target (null unless a symlink), file_size, file_mode,
//     dir_mode, uid, gid and offset: never the data.
//   - A result is a bool or {"allowed": bool, "ops": [...]}; the RFC 6902
//     ops patch data.pstate (paths relative to pstate) when allowed. A
//     policy that uses the state decides one request at a time.
//   - An entry with neither a rule nor a default for a request is an
//     Internal error. AllowRequestsFailingPolicy := true turns denials (and
//     undefined entries) into logged warnings.
//   - Denials are PermissionDenied "<Entry> is blocked by policy: <prints>";
//     the log names the rules that evaluated false or never succeeded.
//     ExplainDenials := true puts those names into the error as well.
//   - Without a policy (the default one missing or broken) every request
//     but SetPolicy is refused; grpc.Health is never gated.
//
// SetPolicy replaces the policy atomically (requests in flight finish under
// the old one; the new one starts with an empty state) after checking, on a confidential
// guest, that sha256(policy) equals HOST_DATA of a fresh SNP report. A CoCo
// initdata document is accepted by SetPolicy too: when the SetPolicyRequest
// text parses as initdata TOML (version, algorithm, [data]) rather than
// Rego, its digest, truncated or zero-padded to 32 bytes, must equal
// HOST_DATA and its data."policy.rego" becomes the policy. LoadInitdata
// reads the block-device form and ApplyInitdata installs it the same way.
package policy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/containerd/errdefs"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/topdown"
	"github.com/open-policy-agent/opa/v1/topdown/print"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// MaxPolicySize bounds a policy (or initdata document) from the host.
const MaxPolicySize = 16 << 20

// maxStateSize bounds the JSON size of data.pstate.
const maxStateSize = 4 << 20

const pkgPath = "data.agent_policy"

// HostDataSource returns the 32-byte HOST_DATA from a fresh SNP report (real
// or simulated). A nil source means the guest is not confidential.
type HostDataSource interface {
	HostData(ctx context.Context) ([]byte, error)
}

// Options configure an Enforcer.
type Options struct {
	// DefaultPolicyPath is loaded at start; when it is missing or does not
	// compile, every request but Health and SetPolicy is refused.
	DefaultPolicyPath string
	Binding           HostDataSource
	Logger            *slog.Logger
}

// Enforcer holds the current policy.
type Enforcer struct {
	opts  Options
	log   *slog.Logger
	cur   atomic.Pointer[compiled]
	setMu sync.Mutex
}

// NewEnforcer loads the default policy. It fails only on bad options; a
// missing or broken default policy leaves the enforcer refusing requests.
func NewEnforcer(ctx context.Context, opts Options) (*Enforcer, error) {
	e := &Enforcer{opts: opts, log: opts.Logger}
	if e.log == nil {
		e.log = slog.Default()
	}
	if opts.DefaultPolicyPath == "" {
		e.log.WarnContext(ctx, "no default policy configured: refusing all requests until SetPolicy")
		return e, nil
	}
	b, err := os.ReadFile(opts.DefaultPolicyPath)
	if err != nil {
		e.log.WarnContext(ctx, "default policy unavailable: refusing all requests until SetPolicy", "path", opts.DefaultPolicyPath, "error", err)
		return e, nil
	}
	p, err := compile(ctx, string(b))
	if err != nil {
		e.log.ErrorContext(ctx, "default policy does not compile: refusing all requests until SetPolicy", "path", opts.DefaultPolicyPath, "error", err)
		return e, nil
	}
	e.cur.Store(p)
	e.log.InfoContext(ctx, "default policy loaded", "path", opts.DefaultPolicyPath, "sha256", p.digest)
	return e, nil
}

// Loaded reports whether a policy is in force, and its SHA-256.
func (e *Enforcer) Loaded() (bool, string) {
	p := e.cur.Load()
	if p == nil {
		return false, ""
	}
	return true, p.digest
}

// ruleRef is a rule an entry's body uses; negated when used as "not rule".
type ruleRef struct {
	name    string
	negated bool
}

// compiled is one prepared, immutable policy and its state.
type compiled struct {
	text           string
	digest         string
	compiler       *ast.Compiler
	store          storage.Store
	failingAllowed bool
	explain        bool
	ruleNames      map[string]bool      // rules without arguments
	refs           map[string][]ruleRef // entry -> rules its bodies use
	queries        sync.Map             // entry -> *rego.PreparedEvalQuery
	constant       map[string]bool      // entries that are only "default X := <bool>"
	// stateful: the policy reads data.pstate or an entry may return state
	// ops; its decisions are then serialised by stateMu.
	stateful bool
	stateMu  sync.Mutex
}

var errUndefined = errors.New("undefined")

// compileText parses and compiles a policy as Rego v0 (with or without
// future.keywords imports: what genpolicy emits and what the Kata agent's
// engine assumes) and, when that fails, as Rego v1.
func compileText(text string) (*ast.Compiler, error) {
	var errs []string
	for _, v := range []ast.RegoVersion{ast.RegoV0, ast.RegoV1} {
		c, err := compileAs(text, v)
		if err == nil {
			return c, nil
		}
		errs = append(errs, fmt.Sprintf("as Rego %s: %v", v, err))
	}
	return nil, fmt.Errorf("policy does not compile (%s): %w", strings.Join(errs, "; "), errdefs.ErrInvalidArgument)
}

func compileAs(text string, v ast.RegoVersion) (*ast.Compiler, error) {
	mod, err := ast.ParseModuleWithOpts("policy.rego", text, ast.ParserOptions{RegoVersion: v})
	if err != nil {
		return nil, err
	}
	if got := mod.Package.Path.String(); got != pkgPath {
		return nil, fmt.Errorf("package is %s, want agent_policy", strings.TrimPrefix(got, "data."))
	}
	c := ast.NewCompiler().WithEnablePrintStatements(true)
	c.Compile(map[string]*ast.Module{"policy.rego": mod})
	if c.Failed() {
		return nil, c.Errors
	}
	return c, nil
}

func compile(ctx context.Context, text string) (*compiled, error) {
	if len(text) > MaxPolicySize {
		return nil, fmt.Errorf("policy of %d bytes exceeds %d: %w", len(text), MaxPolicySize, errdefs.ErrInvalidArgument)
	}
	c, err := compileText(text)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(text))
	p := &compiled{
		text:      text,
		digest:    hex.EncodeToString(sum[:]),
		compiler:  c,
		store:     inmem.NewFromObject(map[string]any{"pstate": map[string]any{}}),
		ruleNames: map[string]bool{},
		refs:      map[string][]ruleRef{},
		constant:  map[string]bool{},
	}
	cm := c.Modules["policy.rego"]
	nonDefault := map[string]bool{}
	for _, r := range cm.Rules {
		name := r.Head.Name.String()
		if len(r.Head.Args) == 0 {
			p.ruleNames[name] = true
		}
		if !r.Default {
			nonDefault[name] = true
		}
	}
	// An entry that is only a boolean default decides without its input:
	// the gate can skip encoding the request.
	for _, r := range cm.Rules {
		name := r.Head.Name.String()
		if r.Default && !nonDefault[name] && r.Head.Value != nil {
			if b, ok := r.Head.Value.Value.(ast.Boolean); ok {
				p.constant[name] = bool(b)
			}
		}
	}
	p.stateful = isStateful(cm)
	for _, r := range cm.Rules {
		entry := r.Head.Name.String()
		seen := map[ruleRef]bool{}
		for _, rr := range p.refs[entry] {
			seen[rr] = true
		}
		for _, expr := range r.Body {
			ast.WalkRefs(expr, func(ref ast.Ref) bool {
				name, ok := strings.CutPrefix(ref.String(), pkgPath+".")
				rr := ruleRef{name: name, negated: expr.Negated}
				if ok && p.ruleNames[name] && name != entry && !seen[rr] {
					seen[rr] = true
					p.refs[entry] = append(p.refs[entry], rr)
				}
				return false
			})
		}
	}
	if v, err := p.evalConst(ctx, "AllowRequestsFailingPolicy"); err == nil && v == true {
		p.failingAllowed = true
	}
	if v, err := p.evalConst(ctx, "ExplainDenials"); err == nil && v == true {
		p.explain = true
	}
	return p, nil
}

var pstateRef = ast.MustParseRef("data.pstate")

// isStateful tells whether decisions of the policy can depend on or change
// data.pstate: it refers to the state (or to all of data), or an entry
// rule yields something other than a boolean constant (an object with ops).
func isStateful(m *ast.Module) bool {
	stateful := false
	ast.WalkRefs(m, func(ref ast.Ref) bool {
		if ref.HasPrefix(pstateRef) || ref.Equal(ast.DefaultRootRef) {
			stateful = true
		}
		return stateful
	})
	for _, r := range m.Rules {
		if _, ok := entryNames[r.Head.Name.String()]; !ok {
			continue
		}
		if r.Head.Value == nil {
			return true
		}
		if _, ok := r.Head.Value.Value.(ast.Boolean); !ok {
			return true
		}
	}
	return stateful
}

// evalConst evaluates a rule without input (e.g. AllowRequestsFailingPolicy).
func (p *compiled) evalConst(ctx context.Context, name string) (any, error) {
	if !p.ruleNames[name] {
		return nil, errUndefined
	}
	v, _, err := p.eval(ctx, name, map[string]any{})
	return v, err
}

func (p *compiled) query(ctx context.Context, entry string) (*rego.PreparedEvalQuery, error) {
	if q, ok := p.queries.Load(entry); ok {
		return q.(*rego.PreparedEvalQuery), nil
	}
	q, err := rego.New(
		rego.Compiler(p.compiler),
		rego.Store(p.store),
		rego.Query(pkgPath+"."+entry),
		rego.EnablePrintStatements(true),
	).PrepareForEval(ctx)
	if err != nil {
		return nil, err
	}
	actual, _ := p.queries.LoadOrStore(entry, &q)
	return actual.(*rego.PreparedEvalQuery), nil
}

type printCollector struct {
	mu    sync.Mutex
	lines []string
}

func (c *printCollector) Print(_ print.Context, s string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.lines) < 64 {
		c.lines = append(c.lines, s)
	}
	return nil
}

// eval evaluates entry; errUndefined when it has no value.
func (p *compiled) eval(ctx context.Context, entry string, input any) (any, []string, error) {
	q, err := p.query(ctx, entry)
	if err != nil {
		return nil, nil, err
	}
	var pc printCollector
	in := rego.EvalInput(input)
	if v, ok := input.(ast.Value); ok {
		in = rego.EvalParsedInput(v)
	}
	rs, err := q.Eval(ctx, in, rego.EvalPrintHook(&pc))
	if err != nil {
		return nil, pc.lines, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, pc.lines, errUndefined
	}
	return rs[0].Expressions[0].Value, pc.lines, nil
}

// Decision is the outcome of one evaluation.
type Decision struct {
	Entry   string
	Allowed bool
	// Enforced is false when the policy allows requests that fail it.
	Enforced     bool
	Prints       []string
	FailingRules []string
	StateOps     int
}

// ErrNoPolicy reports that no policy is loaded.
var ErrNoPolicy = errors.New("no agent policy loaded")

// Evaluate checks one request. input is the Kata JSON encoding of it (a
// map from Encode, or an OPA value).
func (e *Enforcer) Evaluate(ctx context.Context, entry string, input any) (*Decision, error) {
	p := e.cur.Load()
	if p == nil {
		return &Decision{Entry: entry, Enforced: true, Prints: []string{ErrNoPolicy.Error()}}, nil
	}
	return p.decide(ctx, entry, input)
}

func (p *compiled) decide(ctx context.Context, entry string, input any) (*Decision, error) {
	// A stateful policy decides one request at a time, as upstream does:
	// two requests must not both pass on the same state and then both
	// update it (two CreateContainer for one id).
	if p.stateful {
		p.stateMu.Lock()
	}
	d, ops, err := p.evalDecision(ctx, entry, input)
	if err == nil && d.Allowed && len(ops) > 0 {
		if err = p.applyState(ctx, ops, p.stateful); err != nil {
			err = fmt.Errorf("%s: update policy state: %v: %w", entry, err, errdefs.ErrInternal)
		} else {
			d.StateOps = len(ops)
		}
	}
	if p.stateful {
		p.stateMu.Unlock()
	}
	if err != nil {
		return nil, err
	}
	if !d.Allowed {
		d.FailingRules = append(d.FailingRules, p.failingRules(ctx, entry, input)...)
	}
	return d, nil
}

// evalDecision evaluates entry and interprets its result.
func (p *compiled) evalDecision(ctx context.Context, entry string, input any) (*Decision, []patchOp, error) {
	d := &Decision{Entry: entry, Enforced: !p.failingAllowed}
	v, prints, err := p.eval(ctx, entry, input)
	d.Prints = prints
	if errors.Is(err, errUndefined) {
		if p.failingAllowed {
			// Upstream lets AllowRequestsFailingPolicy cover requests the
			// policy does not define; the gate logs them as warnings.
			d.FailingRules = []string{"undefined " + entry}
			return d, nil, nil
		}
		return nil, nil, fmt.Errorf("policy has no rule or default for %s: %w", entry, errdefs.ErrInternal)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("evaluate %s: %v: %w", entry, err, errdefs.ErrInternal)
	}
	var ops []patchOp
	switch r := v.(type) {
	case bool:
		d.Allowed = r
	case map[string]any:
		allowed, ok := r["allowed"].(bool)
		if !ok {
			return nil, nil, fmt.Errorf("%s result has no boolean \"allowed\": %w", entry, errdefs.ErrInternal)
		}
		d.Allowed = allowed
		if raw, ok := r["ops"]; ok && raw != nil {
			b, err := json.Marshal(raw)
			if err == nil {
				err = json.Unmarshal(b, &ops)
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%s result: bad ops: %v: %w", entry, err, errdefs.ErrInternal)
			}
		}
	default:
		return nil, nil, fmt.Errorf("%s result is %T, want bool or object: %w", entry, v, errdefs.ErrInternal)
	}
	return d, ops, nil
}

// maxFailingRules bounds the rule names reported for one denial.
const maxFailingRules = 32

// failingRules explains a denial. It combines two views: every
// argument-less rule the entry's bodies use, evaluated on its own (so a
// denial lists all unmet conditions, not just the first), and a traced
// re-evaluation of the entry, which names the rules and functions that were
// evaluated and never succeeded, and the "not r" conditions that failed
// because r held. The entry itself and rules that succeeded at least once
// are left out.
func (p *compiled) failingRules(ctx context.Context, entry string, input any) []string {
	failing := map[string]bool{}
	for _, rr := range p.refs[entry] {
		v, _, err := p.eval(ctx, rr.name, input)
		truthy := err == nil && v != false
		if truthy == rr.negated {
			name := rr.name
			if rr.negated {
				name = "not " + name
			}
			failing[name] = true
		}
	}
	if q, err := p.query(ctx, entry); err == nil {
		t := &ruleTracer{entered: map[string]bool{}, succeeded: map[string]bool{}, negations: map[string]bool{}}
		in := rego.EvalInput(input)
		if v, ok := input.(ast.Value); ok {
			in = rego.EvalParsedInput(v)
		}
		// The outcome is already known; the trace is all that matters.
		_, _ = q.Eval(ctx, in, rego.EvalQueryTracer(t), rego.EvalPrintHook(&printCollector{}))
		for name := range t.entered {
			if !t.succeeded[name] && name != entry {
				failing[name] = true
			}
		}
		for name := range t.negations {
			failing["not "+name] = true
		}
	}
	out := make([]string, 0, len(failing))
	for name := range failing {
		out = append(out, name)
	}
	sort.Strings(out)
	if len(out) > maxFailingRules {
		out = append(out[:maxFailingRules], "...")
	}
	return out
}

// ruleTracer records which policy rules were entered and which produced a
// value, by rule name, without buffering the trace.
type ruleTracer struct {
	entered, succeeded, negations map[string]bool
}

func (*ruleTracer) Enabled() bool               { return true }
func (*ruleTracer) Config() topdown.TraceConfig { return topdown.TraceConfig{} }
func (t *ruleTracer) TraceEvent(ev topdown.Event) {
	switch n := ev.Node.(type) {
	case *ast.Rule:
		name := ruleName(n)
		if name == "" || n.Default {
			return
		}
		switch ev.Op {
		case topdown.EnterOp:
			t.entered[name] = true
		case topdown.ExitOp:
			t.succeeded[name] = true
		}
	case *ast.Expr:
		if ev.Op != topdown.FailOp || !n.Negated {
			return
		}
		if term, ok := n.Terms.(*ast.Term); ok {
			if ref, ok := term.Value.(ast.Ref); ok {
				if name, ok := strings.CutPrefix(ref.String(), pkgPath+"."); ok && !strings.ContainsAny(name, ".[") {
					t.negations[name] = true
				}
			}
		}
	}
}

// ruleName is a rule's name within package agent_policy.
func ruleName(r *ast.Rule) string {
	if r.Module == nil || r.Module.Package.Path.String() != pkgPath {
		return ""
	}
	return r.Head.Name.String()
}

// maxOps bounds the state operations of one decision.
const maxOps = 64

// applyState writes ops to data.pstate in one transaction; locked tells
// that the caller holds stateMu.
func (p *compiled) applyState(ctx context.Context, ops []patchOp, locked bool) error {
	if len(ops) > maxOps {
		return fmt.Errorf("%d state operations exceed %d", len(ops), maxOps)
	}
	if !locked {
		p.stateMu.Lock()
		defer p.stateMu.Unlock()
	}
	txn, err := p.store.NewTransaction(ctx, storage.WriteParams)
	if err != nil {
		return err
	}
	if err := p.writeOps(ctx, txn, ops); err != nil {
		p.store.Abort(ctx, txn)
		return err
	}
	return p.store.Commit(ctx, txn)
}

// writeOps applies add, remove and replace directly in the store (the
// common case, cost independent of the state's size) and falls back to
// patching a copy of the whole document for test, move and copy.
func (p *compiled) writeOps(ctx context.Context, txn storage.Transaction, ops []patchOp) error {
	simple := true
	for _, op := range ops {
		if op.Op != "add" && op.Op != "remove" && op.Op != "replace" {
			simple = false
		}
	}
	if simple {
		for i, op := range ops {
			parts, err := splitPointer(op.Path)
			if err != nil || len(parts) == 0 {
				return fmt.Errorf("%w: op %d: bad path %q", errPatch, i, op.Path)
			}
			var val any
			if op.Op != "remove" {
				b, err := json.Marshal(op.Value)
				if err != nil || len(b) > maxStateSize {
					return fmt.Errorf("%w: op %d: value too large", errPatch, i)
				}
				json.Unmarshal(b, &val)
			}
			kind := map[string]storage.PatchOp{"add": storage.AddOp, "remove": storage.RemoveOp, "replace": storage.ReplaceOp}[op.Op]
			path := append(storage.Path{"pstate"}, parts...)
			if err := p.store.Write(ctx, txn, kind, path, val); err != nil {
				return fmt.Errorf("%w: op %d (%s %s): %v", errPatch, i, op.Op, op.Path, err)
			}
		}
		return nil
	}
	cur, err := p.store.Read(ctx, txn, storage.MustParsePath("/pstate"))
	if err != nil {
		return err
	}
	b, _ := json.Marshal(cur)
	var doc any
	json.Unmarshal(b, &doc)
	next, err := applyPatch(doc, ops)
	if err != nil {
		return err
	}
	nb, err := json.Marshal(next)
	if err != nil || len(nb) > maxStateSize {
		return fmt.Errorf("policy state of %d bytes exceeds %d", len(nb), maxStateSize)
	}
	var val any
	json.Unmarshal(nb, &val)
	return p.store.Write(ctx, txn, storage.ReplaceOp, storage.MustParsePath("/pstate"), val)
}

// SetPolicy installs a new policy (or a CoCo initdata document carrying
// one). The interceptor has already let SetPolicyRequest through.
func (e *Enforcer) SetPolicy(ctx context.Context, req *agentpb.SetPolicyRequest) error {
	text := req.GetPolicy()
	if len(text) > MaxPolicySize {
		return fmt.Errorf("policy of %d bytes exceeds %d: %w", len(text), MaxPolicySize, errdefs.ErrInvalidArgument)
	}
	if id, ok := asInitdata([]byte(text)); ok {
		return e.ApplyInitdata(ctx, id)
	}
	sum := sha256.Sum256([]byte(text))
	return e.install(ctx, text, sum[:], "policy sha256")
}

// install checks binding against HOST_DATA, compiles and swaps.
func (e *Enforcer) install(ctx context.Context, text string, binding []byte, what string) error {
	e.setMu.Lock()
	defer e.setMu.Unlock()
	if e.opts.Binding != nil {
		hd, err := e.opts.Binding.HostData(ctx)
		if err != nil {
			return fmt.Errorf("read HOST_DATA from the SNP report: %v: %w", err, errdefs.ErrUnavailable)
		}
		want := make([]byte, 32)
		copy(want, binding)
		if !bytes.Equal(hd, want) {
			e.log.WarnContext(ctx, "policy rejected: not bound to this guest", "what", what, "digest", hex.EncodeToString(want), "host_data", hex.EncodeToString(hd))
			return fmt.Errorf("%s %x does not match the SNP report's HOST_DATA %x: %w", what, want, hd, errdefs.ErrPermissionDenied)
		}
	}
	p, err := compile(ctx, text)
	if err != nil {
		return err
	}
	e.cur.Store(p)
	e.log.InfoContext(ctx, "policy installed", "sha256", p.digest, "bound", e.opts.Binding != nil)
	return nil
}
