// Package devmapper creates and removes device-mapper devices through the
// kernel's ioctl interface (/dev/mapper/control), without dmsetup or
// veritysetup in the guest. The agent uses it for dm-verity: the root
// filesystem image whose root hash is on the measured command line, and
// integrity-protected container layers.
package devmapper

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the device-mapper control node.
const ControlPath = "/dev/mapper/control"

// Layout of struct dm_ioctl and struct dm_target_spec (linux/dm-ioctl.h).
const (
	ioctlHeaderSize = 312
	targetSpecSize  = 40
	nameLen         = 128
	uuidLen         = 129

	cmdDevCreate  = 3
	cmdDevRemove  = 4
	cmdDevSuspend = 6
	cmdDevStatus  = 7
	cmdTableLoad  = 9

	flagReadOnly   = 1 << 0
	flagSecureData = 1 << 15
)

// ioctlVersion is the interface version we speak (4.0.0 or later).
var ioctlVersion = [3]uint32{4, 0, 0}

// Target is one line of a device-mapper table.
type Target struct {
	// Start and Length are in 512-byte sectors.
	Start, Length uint64
	Type          string
	Params        string
}

// ioctlNumber is _IOWR(0xfd, cmd, struct dm_ioctl).
func ioctlNumber(cmd uintptr) uintptr {
	const iocReadWrite = 3
	return iocReadWrite<<30 | ioctlHeaderSize<<16 | 0xfd<<8 | cmd
}

// header builds a dm_ioctl for name.
func header(name string, flags uint32, dataSize, targets int) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	b := make([]byte, ioctlHeaderSize, dataSize)
	le := binary.LittleEndian
	for i, v := range ioctlVersion {
		le.PutUint32(b[4*i:], v)
	}
	le.PutUint32(b[12:], uint32(dataSize))
	le.PutUint32(b[16:], ioctlHeaderSize)
	le.PutUint32(b[20:], uint32(targets))
	le.PutUint32(b[28:], flags)
	copy(b[48:48+nameLen], name)
	return b, nil
}

// checkName refuses names the kernel would truncate or a path could abuse.
func checkName(name string) error {
	if name == "" || len(name) >= nameLen || strings.ContainsAny(name, "/\x00 ") || name == "." || name == ".." || name == "control" {
		return fmt.Errorf("device-mapper name %q: want 1-127 characters without '/', spaces or NUL", name)
	}
	return nil
}

// tableLoadBuffer lays out a DM_TABLE_LOAD request.
func tableLoadBuffer(name string, readOnly bool, targets []Target) ([]byte, error) {
	if len(targets) == 0 {
		return nil, errors.New("device-mapper table: no targets")
	}
	var body bytes.Buffer
	for i, t := range targets {
		if t.Type == "" || len(t.Type) >= 16 {
			return nil, fmt.Errorf("device-mapper target %d: type %q", i, t.Type)
		}
		if strings.ContainsRune(t.Params, 0) {
			return nil, fmt.Errorf("device-mapper target %d: NUL in parameters", i)
		}
		params := append([]byte(t.Params), 0)
		size := targetSpecSize + len(params)
		size = (size + 7) &^ 7
		spec := make([]byte, size)
		le := binary.LittleEndian
		le.PutUint64(spec[0:], t.Start)
		le.PutUint64(spec[8:], t.Length)
		if i < len(targets)-1 {
			le.PutUint32(spec[20:], uint32(size))
		}
		copy(spec[24:40], t.Type)
		copy(spec[targetSpecSize:], params)
		body.Write(spec)
	}
	flags := uint32(flagSecureData)
	if readOnly {
		flags |= flagReadOnly
	}
	b, err := header(name, flags, ioctlHeaderSize+body.Len(), len(targets))
	if err != nil {
		return nil, err
	}
	return append(b, body.Bytes()...), nil
}

// Client issues device-mapper ioctls.
type Client struct {
	f *os.File
}

// Open opens the control node.
func Open() (*Client, error) {
	f, err := os.OpenFile(ControlPath, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("device-mapper: %w", err)
	}
	return &Client{f: f}, nil
}

// Close closes the control node.
func (c *Client) Close() error { return c.f.Close() }

func (c *Client) ioctl(cmd uintptr, buf []byte) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, c.f.Fd(), ioctlNumber(cmd), uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

// Create makes device name with the table, activates it and returns the
// path of a block node for it (/dev/mapper/<name>).
func (c *Client) Create(name string, readOnly bool, targets []Target) (string, error) {
	load, err := tableLoadBuffer(name, readOnly, targets)
	if err != nil {
		return "", err
	}
	hdr, err := header(name, 0, ioctlHeaderSize, 0)
	if err != nil {
		return "", err
	}
	if err := c.ioctl(cmdDevCreate, hdr); err != nil {
		return "", fmt.Errorf("create device-mapper device %s: %w", name, err)
	}
	ok := false
	defer func() {
		if !ok {
			c.Remove(name)
		}
	}()
	dev := binary.LittleEndian.Uint64(hdr[40:])
	if err := c.ioctl(cmdTableLoad, load); err != nil {
		return "", fmt.Errorf("load table of %s: %w", name, err)
	}
	resume, _ := header(name, 0, ioctlHeaderSize, 0)
	if err := c.ioctl(cmdDevSuspend, resume); err != nil {
		return "", fmt.Errorf("activate %s: %w", name, err)
	}
	node := filepath.Join(filepath.Dir(ControlPath), name)
	os.Remove(node)
	if err := unix.Mknod(node, unix.S_IFBLK|0o600, int(dev)); err != nil {
		return "", fmt.Errorf("device node for %s: %w", name, err)
	}
	ok = true
	return node, nil
}

// Remove deletes device name and its node.
func (c *Client) Remove(name string) error {
	hdr, err := header(name, 0, ioctlHeaderSize, 0)
	if err != nil {
		return err
	}
	os.Remove(filepath.Join(filepath.Dir(ControlPath), name))
	if err := c.ioctl(cmdDevRemove, hdr); err != nil {
		return fmt.Errorf("remove device-mapper device %s: %w", name, err)
	}
	return nil
}

// Exists reports whether device name exists.
func (c *Client) Exists(name string) (bool, error) {
	hdr, err := header(name, 0, ioctlHeaderSize, 0)
	if err != nil {
		return false, err
	}
	err = c.ioctl(cmdDevStatus, hdr)
	if errors.Is(err, unix.ENXIO) {
		return false, nil
	}
	return err == nil, err
}

// Verity describes a dm-verity device over a data device and a hash
// device in veritysetup's format: a superblock, then the tree.
type Verity struct {
	DataDevice, HashDevice string
	// DataBlocks is the number of 4096-byte data blocks covered.
	DataBlocks uint64
	// HashStartBlock is the 4096-byte block of the hash device where the
	// tree starts, after the superblock: 1 for a separate hash device
	// (the default when zero), DataBlocks+1 for a tree appended to the
	// data.
	HashStartBlock uint64
	// RootHash is the SHA-256 root hash; Salt may be empty.
	RootHash, Salt []byte
}

// Target returns the dm-verity table line for v.
func (v Verity) Target() (Target, error) {
	for _, d := range []string{v.DataDevice, v.HashDevice} {
		if !strings.HasPrefix(d, "/dev/") || strings.ContainsAny(d, " \t\n\x00") {
			return Target{}, fmt.Errorf("verity device %q: want a /dev path", d)
		}
	}
	if len(v.RootHash) != 32 {
		return Target{}, fmt.Errorf("verity root hash of %d bytes: want 32 (sha256)", len(v.RootHash))
	}
	if v.DataBlocks == 0 || v.DataBlocks > 1<<40 {
		return Target{}, fmt.Errorf("verity data blocks %d out of range", v.DataBlocks)
	}
	if len(v.Salt) > 256 {
		return Target{}, fmt.Errorf("verity salt of %d bytes: at most 256", len(v.Salt))
	}
	salt := "-"
	if len(v.Salt) > 0 {
		salt = hex.EncodeToString(v.Salt)
	}
	start := v.HashStartBlock
	if start == 0 {
		start = 1
	}
	if v.DataDevice == v.HashDevice && start <= v.DataBlocks {
		return Target{}, fmt.Errorf("verity tree at block %d overlaps the %d data blocks on the same device", start, v.DataBlocks)
	}
	// Version 1, 4 KiB blocks.
	params := fmt.Sprintf("1 %s %s 4096 4096 %d %d sha256 %s %s", v.DataDevice, v.HashDevice, v.DataBlocks, start,
		hex.EncodeToString(v.RootHash), salt)
	return Target{Start: 0, Length: v.DataBlocks * 8, Type: "verity", Params: params}, nil
}
