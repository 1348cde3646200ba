package policy

import (
	"context"
	"errors"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

const servicePrefix = "/grpc.AgentService/"

// entries maps each AgentService method to its policy entry point, the
// request message name.
var entries = func() map[string]string {
	out := map[string]string{}
	svc := agentpb.File_agent_proto.Services().ByName("AgentService")
	for i := 0; i < svc.Methods().Len(); i++ {
		m := svc.Methods().Get(i)
		out[string(m.Name())] = string(m.Input().Name())
	}
	return out
}()

// EntryPoint returns the policy entry point of a full ttrpc method name.
func EntryPoint(fullMethod string) (string, bool) {
	name, ok := strings.CutPrefix(fullMethod, servicePrefix)
	if !ok {
		return "", false
	}
	e, ok := entries[name]
	return e, ok
}

// UnaryInterceptor gates every /grpc.AgentService/ method; other services
// (grpc.Health) pass. The request is checked as the handler decodes it, so
// the handler never runs for a denied request.
func (e *Enforcer) UnaryInterceptor() ttrpc.UnaryServerInterceptor {
	return func(ctx context.Context, unmarshal ttrpc.Unmarshaler, info *ttrpc.UnaryServerInfo, method ttrpc.Method) (interface{}, error) {
		if !strings.HasPrefix(info.FullMethod, servicePrefix) {
			return method(ctx, unmarshal)
		}
		entry, ok := EntryPoint(info.FullMethod)
		if !ok {
			return nil, status.Errorf(codes.Unimplemented, "unknown method %s", info.FullMethod)
		}
		return method(ctx, func(v interface{}) error {
			if err := unmarshal(v); err != nil {
				return err
			}
			msg, ok := v.(proto.Message)
			if !ok {
				return status.Errorf(codes.Internal, "%s: request is not a protobuf message", entry)
			}
			return e.check(ctx, entry, msg)
		})
	}
}

func (e *Enforcer) check(ctx context.Context, entry string, msg proto.Message) error {
	p := e.cur.Load()
	if p == nil {
		if entry == "SetPolicyRequest" {
			return nil
		}
		e.log.WarnContext(ctx, "request refused: no policy loaded", "entry", entry)
		return status.Errorf(codes.PermissionDenied, "%s is blocked by policy: %v", entry, ErrNoPolicy)
	}
	if allowed, ok := p.constant[entry]; ok && (allowed || !p.failingAllowed) {
		if allowed {
			return nil
		}
		e.log.WarnContext(ctx, "request blocked by policy", "entry", entry, "failing_rules", []string{"default " + entry + " := false"})
		return status.Error(codes.PermissionDenied, entry+" is blocked by policy: ")
	}
	d, err := p.decide(ctx, entry, encodeAST(msg))
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
	msgText := entry + " is blocked by policy: " + strings.Join(d.Prints, "; ")
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
