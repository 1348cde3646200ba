package policy

import (
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// Encode turns a request into the policy input the Kata agent builds: proto
// field names verbatim, a field named "type" becomes "type_", every field is
// present, an unset message is null, enums are integers, 64-bit integers are
// numbers, bytes are arrays of numbers, maps are objects and repeated
// fields arrays.
func Encode(m proto.Message) map[string]any {
	if c, ok := m.(*agentpb.CopyFileRequest); ok {
		return encodeCopyFile(c)
	}
	return encodeMessage(m.ProtoReflect())
}

func fieldName(fd protoreflect.FieldDescriptor) string {
	if n := string(fd.Name()); n != "type" {
		return n
	}
	return "type_"
}

func encodeMessage(m protoreflect.Message) map[string]any {
	out := map[string]any{}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		name := fieldName(fd)
		switch {
		case fd.IsMap():
			obj := map[string]any{}
			if m.Has(fd) {
				m.Get(fd).Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
					obj[k.String()] = encodeValue(fd.MapValue(), v)
					return true
				})
			}
			out[name] = obj
		case fd.IsList():
			list := m.Get(fd).List()
			arr := make([]any, list.Len())
			for j := 0; j < list.Len(); j++ {
				arr[j] = encodeValue(fd, list.Get(j))
			}
			out[name] = arr
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			if m.Has(fd) {
				out[name] = encodeMessage(m.Get(fd).Message())
			} else {
				out[name] = nil
			}
		case fd.HasPresence() && !m.Has(fd):
			// proto3 optional scalars that are unset.
			out[name] = nil
		default:
			out[name] = encodeValue(fd, m.Get(fd))
		}
	}
	return out
}

func encodeValue(fd protoreflect.FieldDescriptor, v protoreflect.Value) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return encodeMessage(v.Message())
	case protoreflect.EnumKind:
		return int64(v.Enum())
	case protoreflect.BoolKind:
		return v.Bool()
	case protoreflect.StringKind:
		return v.String()
	case protoreflect.BytesKind:
		b := v.Bytes()
		arr := make([]any, len(b))
		for i, x := range b {
			arr[i] = int64(x)
		}
		return arr
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return v.Int()
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return v.Uint()
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return v.Float()
	}
	return nil
}

// File types in CopyFile policy input.
const (
	FileTypeRegular   = "Regular"
	FileTypeDirectory = "Directory"
	FileTypeSymlink   = "Symlink"
)

// encodeCopyFile drops the file data: the policy sees what is written
// where, not the bytes. A symlink's target (its data) is kept.
func encodeCopyFile(c *agentpb.CopyFileRequest) map[string]any {
	typ := FileTypeRegular
	target := ""
	switch c.FileMode & 0o170000 {
	case 0o040000:
		typ = FileTypeDirectory
	case 0o120000:
		typ = FileTypeSymlink
		target = string(c.Data)
	}
	return map[string]any{
		"path":           c.Path,
		"file_type":      typ,
		"file_size":      c.FileSize,
		"file_mode":      int64(c.FileMode),
		"dir_mode":       int64(c.DirMode),
		"uid":            int64(c.Uid),
		"gid":            int64(c.Gid),
		"offset":         c.Offset,
		"symlink_target": target,
	}
}
