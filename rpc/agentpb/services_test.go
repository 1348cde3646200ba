package agentpb

import (
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// upstreamAgentService lists every AgentService RPC of the Kata Containers
// agent API with its request and response message.
var upstreamAgentService = map[string][2]string{
	"CreateContainer":                {"grpc.CreateContainerRequest", "google.protobuf.Empty"},
	"StartContainer":                 {"grpc.StartContainerRequest", "google.protobuf.Empty"},
	"RemoveContainer":                {"grpc.RemoveContainerRequest", "google.protobuf.Empty"},
	"ExecProcess":                    {"grpc.ExecProcessRequest", "google.protobuf.Empty"},
	"SignalProcess":                  {"grpc.SignalProcessRequest", "google.protobuf.Empty"},
	"WaitProcess":                    {"grpc.WaitProcessRequest", "grpc.WaitProcessResponse"},
	"UpdateContainer":                {"grpc.UpdateContainerRequest", "google.protobuf.Empty"},
	"UpdateEphemeralMounts":          {"grpc.UpdateEphemeralMountsRequest", "google.protobuf.Empty"},
	"StatsContainer":                 {"grpc.StatsContainerRequest", "grpc.StatsContainerResponse"},
	"PauseContainer":                 {"grpc.PauseContainerRequest", "google.protobuf.Empty"},
	"ResumeContainer":                {"grpc.ResumeContainerRequest", "google.protobuf.Empty"},
	"RemoveStaleVirtiofsShareMounts": {"grpc.RemoveStaleVirtiofsShareMountsRequest", "google.protobuf.Empty"},
	"GetDiagnosticData":              {"grpc.GetDiagnosticDataRequest", "grpc.GetDiagnosticDataResponse"},
	"WriteStdin":                     {"grpc.WriteStreamRequest", "grpc.WriteStreamResponse"},
	"ReadStdout":                     {"grpc.ReadStreamRequest", "grpc.ReadStreamResponse"},
	"ReadStderr":                     {"grpc.ReadStreamRequest", "grpc.ReadStreamResponse"},
	"CloseStdin":                     {"grpc.CloseStdinRequest", "google.protobuf.Empty"},
	"TtyWinResize":                   {"grpc.TtyWinResizeRequest", "google.protobuf.Empty"},
	"UpdateInterface":                {"grpc.UpdateInterfaceRequest", "types.Interface"},
	"UpdateRoutes":                   {"grpc.UpdateRoutesRequest", "grpc.Routes"},
	"ListInterfaces":                 {"grpc.ListInterfacesRequest", "grpc.Interfaces"},
	"ListRoutes":                     {"grpc.ListRoutesRequest", "grpc.Routes"},
	"AddARPNeighbors":                {"grpc.AddARPNeighborsRequest", "google.protobuf.Empty"},
	"GetIPTables":                    {"grpc.GetIPTablesRequest", "grpc.GetIPTablesResponse"},
	"SetIPTables":                    {"grpc.SetIPTablesRequest", "grpc.SetIPTablesResponse"},
	"GetMetrics":                     {"grpc.GetMetricsRequest", "grpc.Metrics"},
	"MemAgentMemcgSet":               {"grpc.MemAgentMemcgConfig", "google.protobuf.Empty"},
	"MemAgentCompactSet":             {"grpc.MemAgentCompactConfig", "google.protobuf.Empty"},
	"CreateSandbox":                  {"grpc.CreateSandboxRequest", "google.protobuf.Empty"},
	"DestroySandbox":                 {"grpc.DestroySandboxRequest", "google.protobuf.Empty"},
	"OnlineCPUMem":                   {"grpc.OnlineCPUMemRequest", "google.protobuf.Empty"},
	"ReseedRandomDev":                {"grpc.ReseedRandomDevRequest", "google.protobuf.Empty"},
	"GetGuestDetails":                {"grpc.GuestDetailsRequest", "grpc.GuestDetailsResponse"},
	"MemHotplugByProbe":              {"grpc.MemHotplugByProbeRequest", "google.protobuf.Empty"},
	"SetGuestDateTime":               {"grpc.SetGuestDateTimeRequest", "google.protobuf.Empty"},
	"CopyFile":                       {"grpc.CopyFileRequest", "google.protobuf.Empty"},
	"GetOOMEvent":                    {"grpc.GetOOMEventRequest", "grpc.OOMEvent"},
	"AddSwap":                        {"grpc.AddSwapRequest", "google.protobuf.Empty"},
	"AddSwapPath":                    {"grpc.AddSwapPathRequest", "google.protobuf.Empty"},
	"GetVolumeStats":                 {"grpc.VolumeStatsRequest", "grpc.VolumeStatsResponse"},
	"ResizeVolume":                   {"grpc.ResizeVolumeRequest", "google.protobuf.Empty"},
	"SetPolicy":                      {"grpc.SetPolicyRequest", "google.protobuf.Empty"},
}

func TestAgentServiceMatchesUpstream(t *testing.T) {
	svc := File_agent_proto.Services().ByName("AgentService")
	if svc == nil {
		t.Fatal("agent.proto declares no AgentService")
	}
	if got, want := string(svc.FullName()), "grpc.AgentService"; got != want {
		t.Fatalf("service name = %q, want %q", got, want)
	}
	if got, want := len(upstreamAgentService), 42; got != want {
		t.Fatalf("upstream table has %d RPCs, want %d", got, want)
	}
	seen := map[string]bool{}
	methods := svc.Methods()
	for i := 0; i < methods.Len(); i++ {
		m := methods.Get(i)
		name := string(m.Name())
		seen[name] = true
		want, ok := upstreamAgentService[name]
		if !ok {
			t.Errorf("RPC %s is not in the upstream API", name)
			continue
		}
		if got := [2]string{string(m.Input().FullName()), string(m.Output().FullName())}; got != want {
			t.Errorf("RPC %s: types %v, want %v", name, got, want)
		}
		if m.IsStreamingClient() || m.IsStreamingServer() {
			t.Errorf("RPC %s is streaming; upstream is unary", name)
		}
	}
	for name := range upstreamAgentService {
		if !seen[name] {
			t.Errorf("RPC %s is missing", name)
		}
	}
}

func TestHealthServiceMatchesUpstream(t *testing.T) {
	svc := File_health_proto.Services().ByName("Health")
	if svc == nil || svc.FullName() != "grpc.Health" {
		t.Fatalf("health.proto must declare grpc.Health")
	}
	want := map[string][2]string{
		"Check":   {"grpc.CheckRequest", "grpc.HealthCheckResponse"},
		"Version": {"grpc.CheckRequest", "grpc.VersionCheckResponse"},
	}
	for i := 0; i < svc.Methods().Len(); i++ {
		m := svc.Methods().Get(i)
		w, ok := want[string(m.Name())]
		if !ok {
			t.Errorf("unexpected Health RPC %s", m.Name())
			continue
		}
		if got := [2]string{string(m.Input().FullName()), string(m.Output().FullName())}; got != w {
			t.Errorf("Health.%s types %v, want %v", m.Name(), got, w)
		}
		delete(want, string(m.Name()))
	}
	if len(want) != 0 {
		t.Errorf("missing Health RPCs: %v", want)
	}
}

// Spot checks of field numbers and types that the policy and the shim rely on.
func TestWireFieldsMatchUpstream(t *testing.T) {
	tests := []struct {
		msg   protoreflect.MessageDescriptor
		field string
		num   protoreflect.FieldNumber
		kind  protoreflect.Kind
	}{
		{(&CreateContainerRequest{}).ProtoReflect().Descriptor(), "OCI", 6, protoreflect.MessageKind},
		{(&CreateContainerRequest{}).ProtoReflect().Descriptor(), "shared_mounts", 8, protoreflect.MessageKind},
		{(&CreateSandboxRequest{}).ProtoReflect().Descriptor(), "sandbox_id", 5, protoreflect.StringKind},
		{(&CopyFileRequest{}).ProtoReflect().Descriptor(), "data", 8, protoreflect.BytesKind},
		{(&CopyFileRequest{}).ProtoReflect().Descriptor(), "offset", 7, protoreflect.Int64Kind},
		{(&Storage{}).ProtoReflect().Descriptor(), "fs_group", 7, protoreflect.MessageKind},
		{(&ReadStreamRequest{}).ProtoReflect().Descriptor(), "len", 3, protoreflect.Uint32Kind},
		{(&SetGuestDateTimeRequest{}).ProtoReflect().Descriptor(), "Usec", 2, protoreflect.Int64Kind},
		{(&Spec{}).ProtoReflect().Descriptor(), "Annotations", 7, protoreflect.MessageKind},
		{(&SetPolicyRequest{}).ProtoReflect().Descriptor(), "policy", 1, protoreflect.StringKind},
	}
	for _, tt := range tests {
		f := tt.msg.Fields().ByName(protoreflect.Name(tt.field))
		if f == nil {
			t.Errorf("%s has no field %s", tt.msg.FullName(), tt.field)
			continue
		}
		if f.Number() != tt.num || f.Kind() != tt.kind {
			t.Errorf("%s.%s = #%d %v, want #%d %v", tt.msg.FullName(), tt.field, f.Number(), f.Kind(), tt.num, tt.kind)
		}
	}
}
