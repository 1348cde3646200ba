package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// patchOp is one RFC 6902 operation.
type patchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	From  string `json:"from"`
	Value any    `json:"value"`
}

var errPatch = errors.New("json patch")

// applyPatch applies ops to doc (a JSON value of maps and slices) and returns
// the new document; doc itself is not modified.
func applyPatch(doc any, ops []patchOp) (any, error) {
	doc = deepCopy(doc)
	for i, op := range ops {
		var err error
		switch op.Op {
		case "add":
			doc, err = setPointer(doc, op.Path, deepCopy(op.Value), true)
		case "replace":
			if _, err = getPointer(doc, op.Path); err == nil {
				doc, err = setPointer(doc, op.Path, deepCopy(op.Value), false)
			}
		case "remove":
			doc, _, err = removePointer(doc, op.Path)
		case "test":
			var v any
			if v, err = getPointer(doc, op.Path); err == nil && !reflect.DeepEqual(normalize(v), normalize(op.Value)) {
				err = fmt.Errorf("test failed at %q", op.Path)
			}
		case "move":
			var v any
			if doc, v, err = removePointer(doc, op.From); err == nil {
				doc, err = setPointer(doc, op.Path, v, true)
			}
		case "copy":
			var v any
			if v, err = getPointer(doc, op.From); err == nil {
				doc, err = setPointer(doc, op.Path, deepCopy(v), true)
			}
		default:
			err = fmt.Errorf("unknown op %q", op.Op)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: op %d: %v", errPatch, i, err)
		}
	}
	return doc, nil
}

func splitPointer(p string) ([]string, error) {
	if p == "" {
		return nil, nil
	}
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("pointer %q does not start with /", p)
	}
	parts := strings.Split(p[1:], "/")
	for i, s := range parts {
		parts[i] = strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
	}
	return parts, nil
}

func getPointer(doc any, p string) (any, error) {
	parts, err := splitPointer(p)
	if err != nil {
		return nil, err
	}
	cur := doc
	for _, k := range parts {
		switch c := cur.(type) {
		case map[string]any:
			v, ok := c[k]
			if !ok {
				return nil, fmt.Errorf("no member %q", k)
			}
			cur = v
		case []any:
			i, err := strconv.Atoi(k)
			if err != nil || i < 0 || i >= len(c) {
				return nil, fmt.Errorf("bad index %q", k)
			}
			cur = c[i]
		default:
			return nil, fmt.Errorf("cannot descend into %T at %q", cur, k)
		}
	}
	return cur, nil
}

// setPointer sets (or, for arrays with insert, inserts) v at p.
func setPointer(doc any, p string, v any, insert bool) (any, error) {
	parts, err := splitPointer(p)
	if err != nil {
		return nil, err
	}
	if len(parts) == 0 {
		return v, nil
	}
	parent, err := getPointer(doc, "/"+strings.Join(escape(parts[:len(parts)-1]), "/"))
	if len(parts) == 1 {
		parent, err = doc, nil
	}
	if err != nil {
		return nil, err
	}
	last := parts[len(parts)-1]
	switch c := parent.(type) {
	case map[string]any:
		c[last] = v
		return doc, nil
	case []any:
		var i int
		if last == "-" {
			i = len(c)
		} else if i, err = strconv.Atoi(last); err != nil || i < 0 || i > len(c) || (!insert && i == len(c)) {
			return nil, fmt.Errorf("bad index %q", last)
		}
		if insert {
			c = append(c, nil)
			copy(c[i+1:], c[i:])
		}
		c[i] = v
		return setPointer(doc, "/"+strings.Join(escape(parts[:len(parts)-1]), "/"), c, false)
	}
	return nil, fmt.Errorf("cannot set %q in %T", last, parent)
}

func removePointer(doc any, p string) (any, any, error) {
	parts, err := splitPointer(p)
	if err != nil || len(parts) == 0 {
		return nil, nil, fmt.Errorf("cannot remove %q", p)
	}
	v, err := getPointer(doc, p)
	if err != nil {
		return nil, nil, err
	}
	parentPath := "/" + strings.Join(escape(parts[:len(parts)-1]), "/")
	var parent any = doc
	if len(parts) > 1 {
		if parent, err = getPointer(doc, parentPath); err != nil {
			return nil, nil, err
		}
	}
	last := parts[len(parts)-1]
	switch c := parent.(type) {
	case map[string]any:
		delete(c, last)
		return doc, v, nil
	case []any:
		i, _ := strconv.Atoi(last)
		c = append(c[:i:i], c[i+1:]...)
		if len(parts) == 1 {
			return c, v, nil
		}
		doc, err = setPointer(doc, parentPath, c, false)
		return doc, v, err
	}
	return nil, nil, fmt.Errorf("cannot remove from %T", parent)
}

func escape(parts []string) []string {
	out := make([]string, len(parts))
	for i, s := range parts {
		out[i] = strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
	}
	return out
}

func deepCopy(v any) any {
	switch c := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(c))
		for k, x := range c {
			m[k] = deepCopy(x)
		}
		return m
	case []any:
		s := make([]any, len(c))
		for i, x := range c {
			s[i] = deepCopy(x)
		}
		return s
	}
	return v
}

// normalize round-trips through JSON so that numbers compare equal.
func normalize(v any) any {
	b, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	json.Unmarshal(b, &out)
	return out
}
