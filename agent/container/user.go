package container

import (
	"fmt"
	"io"
	"os"

	"github.com/containerd/errdefs"
	"github.com/moby/sys/user"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// maxUserDBBytes bounds how much of the image's passwd and group files is read.
const maxUserDBBytes = 4 << 20

// resolveUser turns a user name into ids using the container's own
// /etc/passwd and /etc/group, opened without leaving rootfs.
func resolveUser(rootfs string, u *specs.User) error {
	if u.Username == "" {
		return nil
	}
	open := func(name string) (io.Reader, func()) {
		f, err := os.OpenInRoot(rootfs, name)
		if err != nil {
			return nil, func() {}
		}
		return io.LimitReader(f, maxUserDBBytes), func() { f.Close() }
	}
	passwd, closePasswd := open("etc/passwd")
	defer closePasswd()
	group, closeGroup := open("etc/group")
	defer closeGroup()
	eu, err := user.GetExecUser(u.Username, &user.ExecUser{Uid: int(u.UID), Gid: int(u.GID)}, passwd, group)
	if err != nil {
		return fmt.Errorf("resolve user %q in the container: %w: %w", u.Username, err, errdefs.ErrInvalidArgument)
	}
	if eu.Uid < 0 || eu.Gid < 0 {
		return fmt.Errorf("resolve user %q: negative id: %w", u.Username, errdefs.ErrInvalidArgument)
	}
	u.UID, u.GID = uint32(eu.Uid), uint32(eu.Gid)
	for _, g := range eu.Sgids {
		if g >= 0 {
			u.AdditionalGids = append(u.AdditionalGids, uint32(g))
		}
	}
	u.Username = ""
	return nil
}
