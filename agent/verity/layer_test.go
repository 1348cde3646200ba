package verity

import (
	"errors"
	"strings"
	"testing"

	"github.com/containerd/errdefs"

	"github.com/cocoon-containers/cocoon/rpc/agentpb"
)

func TestParseLayer(t *testing.T) {
	root := strings.Repeat("ab", 32)
	good := func() *agentpb.Storage {
		return &agentpb.Storage{Driver: "mmioblk", Source: "/dev/vdb", Fstype: "erofs", MountPoint: "/run/kata-containers/sandbox/layers/x",
			Options: []string{"ro", OptRootHash + root, OptDataBlocks + "123"}}
	}
	l, err := ParseLayer(good())
	if err != nil {
		t.Fatal(err)
	}
	if l.Device != "/dev/vdb" || l.DataBlocks != 123 || len(l.RootHash) != 32 || l.FSType != "erofs" {
		t.Errorf("parsed %+v", l)
	}
	if !IsLayer(good()) || IsLayer(&agentpb.Storage{Options: []string{"ro"}}) {
		t.Error("IsLayer")
	}
	if !strings.HasPrefix(l.DeviceName(), "layer-abab") {
		t.Errorf("device name %q", l.DeviceName())
	}
	bad := map[string]func(s *agentpb.Storage){
		"partition":       func(s *agentpb.Storage) { s.Source = "/dev/vdb1" },
		"not a disk":      func(s *agentpb.Storage) { s.Source = "/etc/passwd" },
		"traversal":       func(s *agentpb.Storage) { s.Source = "/dev/../dev/vdb" },
		"fstype":          func(s *agentpb.Storage) { s.Fstype = "ext2" },
		"short hash":      func(s *agentpb.Storage) { s.Options[1] = OptRootHash + "abcd" },
		"no hash":         func(s *agentpb.Storage) { s.Options = s.Options[2:] },
		"no blocks":       func(s *agentpb.Storage) { s.Options = s.Options[:2] },
		"zero blocks":     func(s *agentpb.Storage) { s.Options[2] = OptDataBlocks + "0" },
		"other option":    func(s *agentpb.Storage) { s.Options = append(s.Options, "rw") },
		"mount data trap": func(s *agentpb.Storage) { s.Options = append(s.Options, "context=x") },
	}
	for name, mutate := range bad {
		s := good()
		mutate(s)
		if _, err := ParseLayer(s); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: %v, want invalid argument", name, err)
		}
	}
}
