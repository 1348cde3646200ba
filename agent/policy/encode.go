package policy

import (
	"fmt"
	"unicode/utf8"

	"github.com/containerd/errdefs"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// Encode turns a request into the policy input the Kata agent builds: proto
// field names verbatim, a field named "type" becomes "type_", every field is
// present, an unset message is null, enums are integers, 64-bit integers are
// numbers, bytes are arrays of numbers, maps are objects and repeated
// fields arrays. CopyFileRequest is the exception: see encodeCopyFile.
func Encode(m proto.Message) (map[string]any, error) {
	if c, ok := m.(*agentpb.CopyFileRequest); ok {
		return encodeCopyFile(c)
	}
	return encodeMessage(m.ProtoReflect()), nil
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

// File types in CopyFile policy input, from the S_IFMT bits of file_mode.
const (
	FileTypeUnknown   = "Unknown"
	FileTypeRegular   = "Regular"
	FileTypeDirectory = "Directory"
	FileTypeSymlink   = "Symlink"
)

// encodeCopyFile builds the input the Kata agent gives the policy for
// CopyFile: the file data is dropped (the policy sees what is written where,
// not the bytes, and a large file never reaches the engine); a symlink's
// data is its target and is kept as symlink_target, null for other types.
// A symlink target that is not UTF-8 is refused, as upstream does.
func encodeCopyFile(c *agentpb.CopyFileRequest) (map[string]any, error) {
	typ := FileTypeUnknown
	var target any
	switch c.FileMode & 0o170000 {
	case 0o100000:
		typ = FileTypeRegular
	case 0o040000:
		typ = FileTypeDirectory
	case 0o120000:
		typ = FileTypeSymlink
		if !utf8.Valid(c.Data) {
			return nil, fmt.Errorf("copy file %q: symlink target is not UTF-8: %w", c.Path, errdefs.ErrInvalidArgument)
		}
		target = string(c.Data)
	}
	return map[string]any{
		"path":           c.Path,
		"file_type":      typ,
		"symlink_target": target,
		"file_size":      c.FileSize,
		"file_mode":      int64(c.FileMode),
		"dir_mode":       int64(c.DirMode),
		"uid":            int64(c.Uid),
		"gid":            int64(c.Gid),
		"offset":         c.Offset,
	}, nil
}
