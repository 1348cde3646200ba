// Package verity builds and checks dm-verity hash trees in the on-disk format
// that veritysetup(8) writes by default: format version 1, a 512-byte
// superblock at the start of the hash device, the tree from the next hash
// block on, top level first.
package verity

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"runtime"
	"strings"
	"sync"
)

// Params describes a hash tree.
type Params struct {
	DataBlockSize int // default 4096
	HashBlockSize int // default 4096
	Salt          []byte
	// UUID is stored in the superblock; it does not affect the root hash.
	UUID [16]byte
	// NoSuperblock leaves the superblock out; the tree then starts at offset 0.
	NoSuperblock bool
}

// Result is what Format computed.
type Result struct {
	RootHash   []byte
	DataBlocks uint64
	HashBlocks uint64 // tree blocks, superblock not counted
	Params     Params
}

const (
	digestSize     = sha256.Size
	superblockSize = 512
	maxSaltSize    = 256
	signature      = "verity\x00\x00"
	algorithm      = "sha256"
)

// ErrCorrupt reports that data and hash tree disagree.
var ErrCorrupt = errors.New("verity: hash mismatch")

func (p *Params) normalize() error {
	if p.DataBlockSize == 0 {
		p.DataBlockSize = 4096
	}
	if p.HashBlockSize == 0 {
		p.HashBlockSize = 4096
	}
	for _, b := range []int{p.DataBlockSize, p.HashBlockSize} {
		if b < 512 || b > 1<<20 || b&(b-1) != 0 {
			return fmt.Errorf("verity: block size %d: must be a power of two from 512 to 1 MiB", b)
		}
	}
	if len(p.Salt) > maxSaltSize {
		return fmt.Errorf("verity: salt of %d bytes: at most %d", len(p.Salt), maxSaltSize)
	}
	return nil
}

// layout returns, for each level (0 = hashes of data blocks), the block
// index in the hash device where it starts and its size in blocks.
func layout(p Params, dataBlocks uint64) (start, size []uint64) {
	perBlockBits := uint(bits.Len(uint(p.HashBlockSize/digestSize)) - 1)
	levels := 0
	for perBlockBits*uint(levels) < 64 && (dataBlocks-1)>>(perBlockBits*uint(levels)) != 0 {
		levels++
	}
	start = make([]uint64, levels)
	size = make([]uint64, levels)
	pos := uint64(0)
	if !p.NoSuperblock {
		pos = 1 // the superblock occupies the first hash block
		if p.HashBlockSize < superblockSize {
			pos = superblockSize / uint64(p.HashBlockSize)
		}
	}
	for i := levels - 1; i >= 0; i-- {
		shift := perBlockBits * uint(i+1)
		var n uint64
		if shift >= 64 {
			n = 1
		} else {
			n = (dataBlocks + (1 << shift) - 1) >> shift
		}
		start[i] = pos
		size[i] = n
		pos += n
	}
	return start, size
}

// hashData reads dataBlocks blocks and returns their salted digests, in
// order. One goroutine reads 1 MiB chunks; one worker per CPU hashes them.
func hashData(data io.Reader, dataBlocks uint64, p Params) ([]byte, error) {
	if dataBlocks > math.MaxInt/digestSize {
		return nil, fmt.Errorf("verity: %d data blocks is too many", dataBlocks)
	}
	out := make([]byte, dataBlocks*digestSize)
	chunkBlocks := uint64(max(1, (1<<20)/p.DataBlockSize))
	workers := runtime.GOMAXPROCS(0)
	type chunk struct {
		first uint64
		n     int
		buf   []byte
	}
	jobs := make(chan chunk, workers)
	free := make(chan []byte, workers+2)
	for range workers + 2 {
		free <- make([]byte, chunkBlocks*uint64(p.DataBlockSize))
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := sha256.New()
			for c := range jobs {
				for b := 0; b < c.n; b++ {
					off := (c.first + uint64(b)) * digestSize
					h.Reset()
					h.Write(p.Salt)
					h.Write(c.buf[b*p.DataBlockSize : (b+1)*p.DataBlockSize])
					// Sum appends: into out's capacity, in place.
					h.Sum(out[off:off])
				}
				free <- c.buf
			}
		}()
	}
	var rerr error
	for first := uint64(0); first < dataBlocks; {
		n := min(chunkBlocks, dataBlocks-first)
		buf := <-free
		if _, err := io.ReadFull(data, buf[:n*uint64(p.DataBlockSize)]); err != nil {
			rerr = fmt.Errorf("verity: read data blocks %d-%d: %w", first, first+n-1, err)
			break
		}
		jobs <- chunk{first: first, n: int(n), buf: buf}
		first += n
	}
	close(jobs)
	wg.Wait()
	if rerr != nil {
		return nil, rerr
	}
	return out, nil
}

func hashBlock(salt, block []byte) []byte {
	h := sha256.New()
	h.Write(salt)
	h.Write(block)
	return h.Sum(nil)
}

// Format reads exactly dataSize bytes from data (a multiple of the data block
// size), writes the superblock and hash tree to hash, and returns the root
// hash. hash must be positioned at offset 0 and receives a complete image.
func Format(data io.Reader, dataSize int64, hash io.Writer, p Params) (*Result, error) {
	if err := p.normalize(); err != nil {
		return nil, err
	}
	if dataSize <= 0 || dataSize%int64(p.DataBlockSize) != 0 {
		return nil, fmt.Errorf("verity: data size %d is not a positive multiple of the data block size %d", dataSize, p.DataBlockSize)
	}
	dataBlocks := uint64(dataSize) / uint64(p.DataBlockSize)
	start, size := layout(p, dataBlocks)

	// Level 0 from the data, hashed in parallel chunks; upper levels in
	// memory (each is 1/128 of the level below for 4 KiB blocks).
	levels := make([][]byte, len(start))
	lvl0, err := hashData(data, dataBlocks, p)
	if err != nil {
		return nil, err
	}
	single := lvl0[:digestSize]
	if len(start) == 0 {
		// One data block: its hash is the root.
		res := &Result{RootHash: single, DataBlocks: dataBlocks, Params: p}
		if err := writeHashImage(hash, p, dataBlocks, nil, nil); err != nil {
			return nil, err
		}
		return res, nil
	}
	levels[0] = padTo(lvl0, p.HashBlockSize, size[0])
	for i := 1; i < len(levels); i++ {
		var next bytes.Buffer
		below := levels[i-1]
		for off := 0; off < len(below); off += p.HashBlockSize {
			next.Write(hashBlock(p.Salt, below[off:off+p.HashBlockSize]))
		}
		levels[i] = padTo(next.Bytes(), p.HashBlockSize, size[i])
	}
	top := levels[len(levels)-1]
	root := hashBlock(p.Salt, top[:p.HashBlockSize])
	if err := writeHashImage(hash, p, dataBlocks, start, levels); err != nil {
		return nil, err
	}
	var total uint64
	for _, s := range size {
		total += s
	}
	return &Result{RootHash: root, DataBlocks: dataBlocks, HashBlocks: total, Params: p}, nil
}

func padTo(b []byte, blockSize int, blocks uint64) []byte {
	out := make([]byte, uint64(blockSize)*blocks)
	copy(out, b)
	return out
}

func writeHashImage(w io.Writer, p Params, dataBlocks uint64, start []uint64, levels [][]byte) error {
	var pos uint64
	if !p.NoSuperblock {
		sb := encodeSuperblock(p, dataBlocks)
		first := uint64(p.HashBlockSize)
		if first < superblockSize {
			first = superblockSize
		}
		buf := make([]byte, first)
		copy(buf, sb)
		if _, err := w.Write(buf); err != nil {
			return fmt.Errorf("verity: write superblock: %w", err)
		}
		pos = first / uint64(p.HashBlockSize)
	}
	// Levels are laid out top first, in increasing start order.
	for i := len(levels) - 1; i >= 0; i-- {
		if start[i] != pos {
			return fmt.Errorf("verity: internal layout error at level %d", i)
		}
		if _, err := w.Write(levels[i]); err != nil {
			return fmt.Errorf("verity: write hash level %d: %w", i, err)
		}
		pos += uint64(len(levels[i])) / uint64(p.HashBlockSize)
	}
	return nil
}

func encodeSuperblock(p Params, dataBlocks uint64) []byte {
	sb := make([]byte, superblockSize)
	copy(sb[0:8], signature)
	binary.LittleEndian.PutUint32(sb[8:], 1)  // version
	binary.LittleEndian.PutUint32(sb[12:], 1) // hash type
	copy(sb[16:32], p.UUID[:])
	copy(sb[32:64], algorithm)
	binary.LittleEndian.PutUint32(sb[64:], uint32(p.DataBlockSize))
	binary.LittleEndian.PutUint32(sb[68:], uint32(p.HashBlockSize))
	binary.LittleEndian.PutUint64(sb[72:], dataBlocks)
	binary.LittleEndian.PutUint16(sb[80:], uint16(len(p.Salt)))
	copy(sb[88:88+maxSaltSize], p.Salt)
	return sb
}

// ReadSuperblock parses the superblock at the start of a hash device.
func ReadSuperblock(r io.ReaderAt) (Params, uint64, error) {
	sb := make([]byte, superblockSize)
	if _, err := r.ReadAt(sb, 0); err != nil {
		return Params{}, 0, fmt.Errorf("verity: read superblock: %w", err)
	}
	if string(sb[0:8]) != signature {
		return Params{}, 0, errors.New("verity: no superblock (bad signature)")
	}
	if v := binary.LittleEndian.Uint32(sb[8:]); v != 1 {
		return Params{}, 0, fmt.Errorf("verity: superblock version %d unsupported", v)
	}
	if t := binary.LittleEndian.Uint32(sb[12:]); t != 1 {
		return Params{}, 0, fmt.Errorf("verity: hash type %d unsupported", t)
	}
	if alg := strings.TrimRight(string(sb[32:64]), "\x00"); alg != algorithm {
		return Params{}, 0, fmt.Errorf("verity: hash algorithm %q unsupported", alg)
	}
	var p Params
	copy(p.UUID[:], sb[16:32])
	p.DataBlockSize = int(binary.LittleEndian.Uint32(sb[64:]))
	p.HashBlockSize = int(binary.LittleEndian.Uint32(sb[68:]))
	dataBlocks := binary.LittleEndian.Uint64(sb[72:])
	saltSize := int(binary.LittleEndian.Uint16(sb[80:]))
	if saltSize > maxSaltSize {
		return Params{}, 0, fmt.Errorf("verity: salt size %d too large", saltSize)
	}
	p.Salt = append([]byte(nil), sb[88:88+saltSize]...)
	if err := p.normalize(); err != nil {
		return Params{}, 0, err
	}
	if dataBlocks == 0 {
		return Params{}, 0, errors.New("verity: superblock names zero data blocks")
	}
	return p, dataBlocks, nil
}

// Verify checks every data block and hash block against rootHash, reading
// the parameters from the hash device's superblock.
func Verify(data, hash io.ReaderAt, rootHash []byte) error {
	p, dataBlocks, err := ReadSuperblock(hash)
	if err != nil {
		return err
	}
	start, size := layout(p, dataBlocks)
	blk := make([]byte, p.DataBlockSize)
	if len(start) == 0 {
		if _, err := data.ReadAt(blk, 0); err != nil {
			return fmt.Errorf("verity: read data block 0: %w", err)
		}
		if !bytes.Equal(hashBlock(p.Salt, blk), rootHash) {
			return fmt.Errorf("%w: data block 0", ErrCorrupt)
		}
		return nil
	}
	hb := make([]byte, p.HashBlockSize)
	top := len(start) - 1
	if _, err := hash.ReadAt(hb, int64(start[top])*int64(p.HashBlockSize)); err != nil {
		return fmt.Errorf("verity: read top hash block: %w", err)
	}
	if !bytes.Equal(hashBlock(p.Salt, hb), rootHash) {
		return fmt.Errorf("%w: root hash", ErrCorrupt)
	}
	perBlock := uint64(p.HashBlockSize / digestSize)
	// Each level's blocks are checked against the level above.
	for lvl := top; lvl >= 0; lvl-- {
		var n uint64
		if lvl == 0 {
			n = dataBlocks
		} else {
			n = size[lvl-1]
		}
		for i := uint64(0); i < n; i++ {
			var b []byte
			if lvl == 0 {
				if _, err := data.ReadAt(blk, int64(i)*int64(p.DataBlockSize)); err != nil {
					return fmt.Errorf("verity: read data block %d: %w", i, err)
				}
				b = blk
			} else {
				if _, err := hash.ReadAt(hb, int64(start[lvl-1]+i)*int64(p.HashBlockSize)); err != nil {
					return fmt.Errorf("verity: read hash block: %w", err)
				}
				b = hb
			}
			want := make([]byte, digestSize)
			off := int64(start[lvl]+i/perBlock)*int64(p.HashBlockSize) + int64(i%perBlock)*digestSize
			if _, err := hash.ReadAt(want, off); err != nil {
				return fmt.Errorf("verity: read hash entry: %w", err)
			}
			if !bytes.Equal(hashBlock(p.Salt, b), want) {
				if lvl == 0 {
					return fmt.Errorf("%w: data block %d", ErrCorrupt, i)
				}
				return fmt.Errorf("%w: hash block %d of level %d", ErrCorrupt, i, lvl-1)
			}
		}
	}
	return nil
}

// HashDeviceSize is the size of the hash image Format wrote.
func (r *Result) HashDeviceSize() int64 {
	var sb int64
	if !r.Params.NoSuperblock {
		sb = int64(max(r.Params.HashBlockSize, superblockSize))
	}
	return sb + int64(r.HashBlocks)*int64(r.Params.HashBlockSize)
}

// Header formats the result like veritysetup format prints it.
func (r *Result) Header(hashName string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "VERITY header information for %s\n", hashName)
	fmt.Fprintf(&b, "UUID:            \t%s\n", FormatUUID(r.Params.UUID))
	fmt.Fprintf(&b, "Hash type:       \t1\n")
	fmt.Fprintf(&b, "Data blocks:     \t%d\n", r.DataBlocks)
	fmt.Fprintf(&b, "Data block size: \t%d\n", r.Params.DataBlockSize)
	fmt.Fprintf(&b, "Hash blocks:     \t%d\n", r.HashBlocks)
	fmt.Fprintf(&b, "Hash block size: \t%d\n", r.Params.HashBlockSize)
	fmt.Fprintf(&b, "Hash algorithm:  \t%s\n", algorithm)
	salt := "-"
	if len(r.Params.Salt) > 0 {
		salt = hex.EncodeToString(r.Params.Salt)
	}
	fmt.Fprintf(&b, "Salt:            \t%s\n", salt)
	fmt.Fprintf(&b, "Root hash:      \t%s\n", hex.EncodeToString(r.RootHash))
	fmt.Fprintf(&b, "Hash device size: \t%d [bytes]\n", r.HashDeviceSize())
	return b.String()
}

// FormatUUID prints a UUID in the usual 8-4-4-4-12 form.
func FormatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
