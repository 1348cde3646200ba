package policy

import (
	"sync"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

// encodeAST builds the same input as Encode directly as an OPA value, so
// evaluation skips the reflection-based conversion of a Go map.
func encodeAST(m proto.Message) (ast.Value, error) {
	if c, ok := m.(*agentpb.CopyFileRequest); ok {
		in, err := encodeCopyFile(c)
		if err != nil {
			return nil, err
		}
		return ast.InterfaceToValue(in)
	}
	return astMessage(m.ProtoReflect()), nil
}

// fieldKeys caches, per message type, the input keys of its fields; the
// terms are shared by all inputs and never modified.
var fieldKeys sync.Map // protoreflect.FullName -> []*ast.Term

func keysOf(md protoreflect.MessageDescriptor) []*ast.Term {
	if k, ok := fieldKeys.Load(md.FullName()); ok {
		return k.([]*ast.Term)
	}
	fields := md.Fields()
	keys := make([]*ast.Term, fields.Len())
	for i := range keys {
		keys[i] = ast.StringTerm(fieldName(fields.Get(i)))
	}
	fieldKeys.Store(md.FullName(), keys)
	return keys
}

func astMessage(m protoreflect.Message) ast.Value {
	fields := m.Descriptor().Fields()
	keys := keysOf(m.Descriptor())
	terms := make([][2]*ast.Term, 0, fields.Len())
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		key := keys[i]
		var val *ast.Term
		switch {
		case fd.IsMap():
			obj := ast.NewObject()
			if m.Has(fd) {
				m.Get(fd).Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
					obj.Insert(ast.StringTerm(k.String()), astScalar(fd.MapValue(), v))
					return true
				})
			}
			val = ast.NewTerm(obj)
		case fd.IsList():
			list := m.Get(fd).List()
			arr := make([]*ast.Term, list.Len())
			for j := range arr {
				arr[j] = astScalar(fd, list.Get(j))
			}
			val = ast.ArrayTerm(arr...)
		case fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind:
			if m.Has(fd) {
				val = ast.NewTerm(astMessage(m.Get(fd).Message()))
			} else {
				val = ast.NullTerm()
			}
		case fd.HasPresence() && !m.Has(fd):
			val = ast.NullTerm()
		default:
			val = astScalar(fd, m.Get(fd))
		}
		terms = append(terms, [2]*ast.Term{key, val})
	}
	return ast.NewObject(terms...)
}

func astScalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) *ast.Term {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return ast.NewTerm(astMessage(v.Message()))
	case protoreflect.EnumKind:
		return ast.IntNumberTerm(int(v.Enum()))
	case protoreflect.BoolKind:
		return ast.BooleanTerm(v.Bool())
	case protoreflect.StringKind:
		return ast.StringTerm(v.String())
	case protoreflect.BytesKind:
		b := v.Bytes()
		arr := make([]*ast.Term, len(b))
		for i, x := range b {
			arr[i] = ast.IntNumberTerm(int(x))
		}
		return ast.ArrayTerm(arr...)
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind,
		protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return ast.IntNumberTerm(int(v.Int()))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind, protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return ast.UIntNumberTerm(v.Uint())
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		return ast.FloatNumberTerm(v.Float())
	}
	return ast.NullTerm()
}
