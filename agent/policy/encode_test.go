package policy

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/containerd/errdefs"
	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
	"github.com/cocoon-containers/cocoon/rpc/typespb"
)

var update = flag.Bool("update", false, "rewrite golden files")

// requestTypes lists every AgentService request message once, in
// descriptor order.
func requestTypes() []protoreflect.MessageType {
	var out []protoreflect.MessageType
	seen := map[string]bool{}
	svc := agentpb.File_agent_proto.Services().ByName("AgentService")
	for i := 0; i < svc.Methods().Len(); i++ {
		g := gates[string(svc.Methods().Get(i).Name())]
		if !seen[g.entry] {
			seen[g.entry] = true
			out = append(out, g.input)
		}
	}
	return out
}

// fill sets every field of m to a deterministic value derived from the
// field (negative numbers for signed kinds, values beyond 32 bits for
// 64-bit kinds, one list element, one map entry), down to depth levels of
// nested messages; deeper messages stay unset.
func fill(m protoreflect.Message, depth int) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		switch {
		case fd.IsMap():
			mp := m.Mutable(fd).Map()
			var key protoreflect.MapKey
			switch fd.MapKey().Kind() {
			case protoreflect.StringKind:
				key = protoreflect.ValueOfString("key-" + string(fd.Name())).MapKey()
			case protoreflect.BoolKind:
				key = protoreflect.ValueOfBool(true).MapKey()
			default:
				key = scalar(fd.MapKey()).MapKey()
			}
			if fd.MapValue().Kind() == protoreflect.MessageKind {
				if depth == 0 {
					continue
				}
				v := mp.NewValue()
				fill(v.Message(), depth-1)
				mp.Set(key, v)
			} else {
				mp.Set(key, scalar(fd.MapValue()))
			}
		case fd.IsList():
			l := m.Mutable(fd).List()
			if fd.Kind() == protoreflect.MessageKind {
				if depth == 0 {
					continue
				}
				v := l.NewElement()
				fill(v.Message(), depth-1)
				l.Append(v)
			} else {
				l.Append(scalar(fd))
			}
		case fd.Kind() == protoreflect.MessageKind:
			if depth > 0 {
				fill(m.Mutable(fd).Message(), depth-1)
			}
		default:
			m.Set(fd, scalar(fd))
		}
	}
}

func scalar(fd protoreflect.FieldDescriptor) protoreflect.Value {
	n := int64(fd.Number())
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(string(fd.Name()) + "-value")
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{0, byte(n), 255})
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get(vals.Len() - 1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(-n))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(-n << 40)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(n) + 1<<31)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(uint64(n) << 40)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(float32(n) + 0.5)
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(float64(n) + 0.25)
	}
	panic(fmt.Sprintf("no test value for %s", fd.Kind()))
}

// encodeBoth encodes m with both encoders, checks that they agree and
// returns the JSON.
func encodeBoth(t *testing.T, m proto.Message) json.RawMessage {
	t.Helper()
	in, err := Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	v, err := encodeAST(m)
	if err != nil {
		t.Fatal(err)
	}
	viaAST, err := astJSON(v)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(viaAST, got) {
		t.Fatalf("OPA-value encoding differs from Encode:\ngot  %s\nwant %s", viaAST, got)
	}
	return got
}

func astJSON(v ast.Value) ([]byte, error) {
	x, err := ast.JSON(v)
	if err != nil {
		return nil, err
	}
	return json.Marshal(x)
}

func checkGolden(t *testing.T, name string, doc any) {
	t.Helper()
	got, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	path := filepath.Join("testdata", "encode", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (go test -run TestEncode -update writes it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("encoding of %s changed:\ngot  %s\nwant %s", name, got, want)
	}
}

// TestEncodeEveryRequest pins the input of every request message, empty
// and with every field set.
func TestEncodeEveryRequest(t *testing.T) {
	types := requestTypes()
	if got, want := len(types), 41; got != want {
		t.Fatalf("%d request messages, want %d (42 methods, ReadStdout and ReadStderr share one)", got, want)
	}
	for _, mt := range types {
		name := string(mt.Descriptor().Name())
		t.Run(name, func(t *testing.T) {
			zero := mt.New().Interface()
			full := mt.New()
			fill(full, 4)
			if _, ok := zero.(*agentpb.CopyFileRequest); ok {
				full.Interface().(*agentpb.CopyFileRequest).Data = []byte("data")
			}
			checkGolden(t, name, map[string]json.RawMessage{
				"empty":  encodeBoth(t, zero),
				"filled": encodeBoth(t, full.Interface()),
			})
		})
	}
}

// TestEncodeRealistic pins the inputs of requests as the runtime sends them.
func TestEncodeRealistic(t *testing.T) {
	tests := map[string]proto.Message{
		"create_container": createReq("c1", "busybox", "sh", "-c", "echo hi"),
		"exec_process": &agentpb.ExecProcessRequest{ContainerId: "c1", ExecId: "e1",
			Process: &agentpb.Process{Args: []string{"ls"}, Env: []string{"A=b"}, User: &agentpb.User{UID: 1000}}},
		"read_stream":     &agentpb.ReadStreamRequest{ContainerId: "c1", ExecId: "c1", Len: 4096},
		"copy_file":       &agentpb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/x-hosts", FileSize: 10, FileMode: 0o100644, DirMode: 0o40755, Uid: -1, Gid: -1, Data: []byte("127.0.0.1\n")},
		"copy_directory":  &agentpb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/x-certs", FileMode: 0o40755, DirMode: 0o40755},
		"copy_symlink":    &agentpb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/link", FileMode: 0o120777, Data: []byte("..data/token")},
		"copy_fifo":       &agentpb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/fifo", FileMode: 0o10644},
		"update_iface":    &agentpb.UpdateInterfaceRequest{Interface: &typespb.Interface{Name: "eth0", Type: "veth", Mtu: 1500, IPAddresses: []*typespb.IPAddress{{Family: typespb.IPFamily_v6, Address: "fe80::1", Mask: "64"}}}},
		"reseed":          &agentpb.ReseedRandomDevRequest{Data: []byte{1, 2, 255}},
		"set_time":        &agentpb.SetGuestDateTimeRequest{Sec: 1 << 40, Usec: -1},
		"memcg_optional":  &agentpb.MemAgentMemcgConfig{Swap: proto.Bool(true)},
		"destroy_sandbox": &agentpb.DestroySandboxRequest{},
	}
	for name, msg := range tests {
		t.Run(name, func(t *testing.T) {
			checkGolden(t, name, json.RawMessage(encodeBoth(t, msg)))
		})
	}
}

func TestEncodeCopyFileRefusesBadSymlink(t *testing.T) {
	req := &agentpb.CopyFileRequest{Path: "/run/kata-containers/shared/containers/l", FileMode: 0o120777, Data: []byte{0xff, 0xfe}}
	if _, err := Encode(req); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("Encode(non-UTF-8 symlink) = %v, want InvalidArgument", err)
	}
	if _, err := encodeAST(req); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("encodeAST(non-UTF-8 symlink) = %v, want InvalidArgument", err)
	}
}

// FuzzEncode decodes arbitrary bytes as any request message and checks that
// both encoders accept what the wire format accepts and agree.
func FuzzEncode(f *testing.F) {
	types := requestTypes()
	for i, mt := range types {
		m := mt.New()
		fill(m, 3)
		b, err := proto.Marshal(m.Interface())
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
	}
	b, _ := proto.Marshal(createReq("c1", "busybox", "sh"))
	f.Add(uint8(0), b)
	f.Fuzz(func(t *testing.T, kind uint8, b []byte) {
		m := types[int(kind)%len(types)].New().Interface()
		if proto.Unmarshal(b, m) != nil {
			return
		}
		in, err := Encode(m)
		if err != nil {
			if _, ok := m.(*agentpb.CopyFileRequest); ok && errors.Is(err, errdefs.ErrInvalidArgument) {
				return
			}
			t.Fatalf("Encode: %v", err)
		}
		got, err := json.Marshal(in)
		if err != nil {
			t.Fatalf("encoded input does not marshal: %v", err)
		}
		v, err := encodeAST(m)
		if err != nil {
			t.Fatalf("encodeAST: %v", err)
		}
		viaAST, err := astJSON(v)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, viaAST) {
			t.Fatalf("encoders disagree:\n%s\n%s", got, viaAST)
		}
	})
}
