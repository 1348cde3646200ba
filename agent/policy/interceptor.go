package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

const servicePrefix = "/grpc.AgentService/"

// gate is what the interceptor knows about one AgentService method.
type gate struct {
	entry string                   // policy entry point: the request message name
	input protoreflect.MessageType // the request message
}

// gates maps each AgentService method, from the descriptor, to its gate.
var gates = func() map[string]gate {
	out := map[string]gate{}
	svc := agentpb.File_agent_proto.Services().ByName("AgentService")
	for i := 0; i < svc.Methods().Len(); i++ {
		m := svc.Methods().Get(i)
		mt, err := protoregistry.GlobalTypes.FindMessageByName(m.Input().FullName())
		if err != nil {
			panic(fmt.Sprintf("agent policy: request type of %s is not registered: %v", m.Name(), err))
		}
		out[string(m.Name())] = gate{entry: string(m.Input().Name()), input: mt}
	}
	return out
}()

// entryNames are the policy entry points of all AgentService methods.
var entryNames = func() map[string]bool {
	out := map[string]bool{}
	for _, g := range gates {
		out[g.entry] = true
	}
	return out
}()

// EntryPoint returns the policy entry point of a full ttrpc method name.
func EntryPoint(fullMethod string) (string, bool) {
	name, ok := strings.CutPrefix(fullMethod, servicePrefix)
	if !ok {
		return "", false
	}
	g, ok := gates[name]
	return g.entry, ok
}

// UnaryInterceptor gates every /grpc.AgentService/ method; other services
// (grpc.Health) pass. The interceptor decodes the request itself and checks
// it before the handler runs, so a handler can never act on a request the
// policy did not see; an unknown AgentService method is refused.
func (e *Enforcer) UnaryInterceptor() ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (interface{}, error) {
		name, ok := strings.CutPrefix(info.FullMethod, servicePrefix)
		if !ok {
			return method(ctx, unmarshal)
		}
		g, ok := gates[name]
		if !ok {
			return nil, status.Errorf(codes.Unimplemented, "unknown method %s", info.FullMethod)
		}
		p := e.cur.Load()
		if p != nil {
			// A policy whose entry is only a boolean default decides
			// without the input: no decoding, no evaluation.
			if allowed, ok := p.constant[g.entry]; ok && (allowed || !p.failingAllowed) {
				if !allowed {
					e.log.WarnContext(ctx, "request blocked by policy", "entry", g.entry, "failing_rules", []string{"default " + g.entry + " := false"})
					return nil, status.Error(codes.PermissionDenied, g.entry+" is blocked by policy: ")
				}
				return method(ctx, unmarshal)
			}
		}
		req := g.input.New().Interface()
		if err := unmarshal(req); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "decode %s: %v", g.entry, err)
		}
		if err := e.check(ctx, p, g.entry, req); err != nil {
			return nil, err
		}
		return method(ctx, unmarshal)
	}
}

// check evaluates one decoded request against p (nil: no policy loaded)
// and returns nil or the gRPC status to answer with.
func (e *Enforcer) check(ctx context.Context, p *compiled, entry string, msg proto.Message) error {
	if p == nil {
		if entry == "SetPolicyRequest" {
			return nil
		}
		e.log.WarnContext(ctx, "request refused: no policy loaded", "entry", entry)
		return status.Errorf(codes.PermissionDenied, "%s is blocked by policy: %v", entry, ErrNoPolicy)
	}
	input, err := encodeAST(msg)
	if err != nil {
		e.log.WarnContext(ctx, "request refused: cannot build policy input", "entry", entry, "error", err)
		return toStatus(err)
	}
	d, err := p.decide(ctx, entry, input)
	if err != nil {
		e.log.ErrorContext(ctx, "policy evaluation failed", "entry", entry, "error", err)
		return toStatus(err)
	}
	if d.Allowed {
		return nil
	}
	if !d.Enforced {
		e.log.WarnContext(ctx, "request fails the policy, allowed by AllowRequestsFailingPolicy", "entry", entry, "failing_rules", d.FailingRules, "prints", d.Prints)
		return nil
	}
	e.log.WarnContext(ctx, "request blocked by policy", "entry", entry, "failing_rules", d.FailingRules, "prints", d.Prints)
	msgText := entry + " is blocked by policy: " + strings.Join(d.Prints, " ")
	if p.explain && len(d.FailingRules) > 0 {
		msgText += " (failing rules: " + strings.Join(d.FailingRules, ", ") + ")"
	}
	return status.Error(codes.PermissionDenied, msgText)
}

// toStatus converts an errdefs-classed error to a gRPC status.
func toStatus(err error) error {
	code := codes.Unknown
	switch {
	case errors.Is(err, errdefs.ErrInvalidArgument):
		code = codes.InvalidArgument
	case errors.Is(err, errdefs.ErrPermissionDenied):
		code = codes.PermissionDenied
	case errors.Is(err, errdefs.ErrUnavailable):
		code = codes.Unavailable
	case errors.Is(err, errdefs.ErrInternal):
		code = codes.Internal
	case errors.Is(err, errdefs.ErrNotFound):
		code = codes.NotFound
	}
	return status.Error(code, err.Error())
}

// ToStatus is toStatus for the agent's SetPolicy handler.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	return toStatus(err)
}
