// Package rootfscli implements the cocoon-rootfs command line.
package rootfscli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cocoon-containers/cocoon/rootfs"
	"github.com/cocoon-containers/cocoon/rootfs/kernel"
	"github.com/cocoon-containers/cocoon/rootfs/verity"
)

const usage = `usage:
  cocoon-rootfs verity format DATA HASHFILE [--salt HEX] [--data-block-size N] [--hash-block-size N] [--uuid UUID]
  cocoon-rootfs verity verify DATA HASHFILE ROOTHASH
  cocoon-rootfs build --out DIR [--config FILE] [--agent FILE] [--kernel PKG|FILE|DIR] [--kernel-cache DIR]
                     [--cmdline STRING] [--default-policy allow-all|allow-only-setpolicy|FILE]
  cocoon-rootfs kernel fetch --out DIR [--package linux-image-amd64|FILE.deb|FILE.rpm]
  cocoon-rootfs layers OCI-LAYOUT [--ref NAME] [--out DIR]`

// Run executes one command.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) < 1 {
		return errors.New(usage)
	}
	switch args[0] {
	case "verity":
		if len(args) < 2 {
			return errors.New(usage)
		}
		switch args[1] {
		case "format":
			return verityFormat(args[2:], stdout)
		case "verify":
			return verityVerify(args[2:], stdout)
		}
	case "build":
		return build(ctx, args[1:], stdout, stderr)
	case "kernel":
		if len(args) >= 2 && args[1] == "fetch" {
			return kernelFetch(ctx, args[2:], stdout, stderr)
		}
	case "layers":
		return layers(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprintln(stdout, usage)
		return nil
	}
	return fmt.Errorf("unknown command %q\n%s", strings.Join(args, " "), usage)
}

// splitArgs separates flags from positional arguments so that flags may
// follow positionals, as with veritysetup.
func splitArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	return pos, nil
}

func verityFormat(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("verity format", flag.ContinueOnError)
	salt := fs.String("salt", "", "salt as hex (default: 32 random bytes; - for none)")
	dbs := fs.Int("data-block-size", 4096, "data block size")
	hbs := fs.Int("hash-block-size", 4096, "hash block size")
	uuidFlag := fs.String("uuid", "", "superblock UUID (default: random)")
	pos, err := splitArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return errors.New("verity format takes DATA HASHFILE")
	}
	p := verity.Params{DataBlockSize: *dbs, HashBlockSize: *hbs}
	switch *salt {
	case "":
		p.Salt = make([]byte, 32)
		rand.Read(p.Salt)
	case "-":
	default:
		if p.Salt, err = hex.DecodeString(*salt); err != nil {
			return fmt.Errorf("--salt: %w", err)
		}
	}
	if *uuidFlag == "" {
		rand.Read(p.UUID[:])
		p.UUID[6] = p.UUID[6]&0x0f | 0x40
		p.UUID[8] = p.UUID[8]&0x3f | 0x80
	} else {
		b, err := hex.DecodeString(strings.ReplaceAll(*uuidFlag, "-", ""))
		if err != nil || len(b) != 16 {
			return fmt.Errorf("--uuid %q is not a UUID", *uuidFlag)
		}
		copy(p.UUID[:], b)
	}
	res, err := rootfs.FormatFile(pos[0], pos[1], p)
	if err != nil {
		return err
	}
	fmt.Fprint(stdout, res.Header(pos[1]))
	return nil
}

func verityVerify(args []string, stdout io.Writer) error {
	if len(args) != 3 {
		return errors.New("verity verify takes DATA HASHFILE ROOTHASH")
	}
	root, err := hex.DecodeString(args[2])
	if err != nil || len(root) != 32 {
		return fmt.Errorf("root hash %q: want 64 hex digits", args[2])
	}
	d, err := os.Open(args[0])
	if err != nil {
		return err
	}
	defer d.Close()
	h, err := os.Open(args[1])
	if err != nil {
		return err
	}
	defer h.Close()
	if err := verity.Verify(d, h, root); err != nil {
		return fmt.Errorf("verification failed: %w", err)
	}
	fmt.Fprintln(stdout, "Verification of data area succeeded.")
	return nil
}

func build(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("build", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "", "build configuration (TOML); optional with --agent")
	out := fs.String("out", "", "output directory")
	agent := fs.String("agent", "", "agent binary (overrides the configuration)")
	kern := fs.String("kernel", "", "kernel: Debian package name, .deb, .rpm or unpacked tree (default "+kernel.DefaultPackage+")")
	cache := fs.String("kernel-cache", "", "kernel package cache (default "+rootfs.DefaultKernelCache+")")
	cmdline := fs.String("cmdline", "", "base kernel command line the launcher passes (recorded and measured)")
	policy := fs.String("default-policy", "", "allow-all, allow-only-setpolicy or a Rego file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 || (*cfgPath == "" && *agent == "") {
		return errors.New("build takes --out DIR and --config FILE or --agent FILE")
	}
	cfg := &rootfs.Config{}
	if *cfgPath != "" {
		var err error
		if cfg, err = rootfs.LoadConfig(*cfgPath); err != nil {
			return err
		}
	}
	// Flags override the configuration; their paths are relative to the
	// working directory, not to the configuration file.
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["agent"] {
		cfg.Agent = absPath(*agent)
	}
	if set["kernel"] {
		cfg.Kernel = pathIfExists(*kern)
	}
	if set["kernel-cache"] {
		cfg.KernelCache = absPath(*cache)
	}
	if set["cmdline"] {
		cfg.Cmdline = *cmdline
	}
	if set["default-policy"] {
		cfg.DefaultPolicy = pathIfExists(*policy)
	}
	m, err := rootfs.Build(ctx, cfg, *out, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kernel:                   %s\n", m.KernelVersion)
	fmt.Fprintf(stdout, "vmlinuz:                  %s\n", filepath.Join(*out, rootfs.KernelFile))
	fmt.Fprintf(stdout, "initrd:                   %s\n", filepath.Join(*out, rootfs.InitrdFile))
	fmt.Fprintf(stdout, "initrd sha256:            %s\n", m.Outputs["initrd"].SHA256)
	fmt.Fprintf(stdout, "simulated measurement:    %s\n", m.ReferenceValues.SimulatedMeasurement)
	fmt.Fprintf(stdout, "default policy HOST_DATA: %s\n", m.ReferenceValues.DefaultPolicyHostData)
	if m.ReferenceValues.VerityRootHash != "" {
		fmt.Fprintf(stdout, "Root hash:                %s\n", m.ReferenceValues.VerityRootHash)
	}
	return nil
}

// layers prints, for every layer of an image in an OCI layout, its
// diff_id and the dm-verity root hash of the layer image the shim will
// attach for it: what a pod policy lists.
func layers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("layers", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ref := fs.String("ref", "", "image in the layout (org.opencontainers.image.ref.name); needed when it holds several")
	out := fs.String("out", "", "keep the layer images in DIR (default: a temporary directory, removed)")
	pos, err := splitArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("layers takes one OCI layout directory")
	}
	dir := *out
	if dir == "" {
		if dir, err = os.MkdirTemp("", "cocoon-layers-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	ls, err := rootfs.LayerImagesFromLayout(ctx, pos[0], *ref, dir)
	if err != nil {
		return err
	}
	for _, l := range ls {
		fmt.Fprintf(stdout, "%s %s\n", l.DiffID, hex.EncodeToString(l.RootHash))
	}
	return nil
}

func kernelFetch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("kernel fetch", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "cache directory")
	pkg := fs.String("package", kernel.DefaultPackage, "Debian kernel package name, or a .deb or .rpm file")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || fs.NArg() != 0 {
		return errors.New("kernel fetch takes --out DIR [--package NAME|FILE]")
	}
	k, err := rootfs.FetchKernel(ctx, *pkg, *out, stderr)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "version: %s\nvmlinuz: %s\nconfig: %s\nmodules: %s\n", k.Version, k.Vmlinuz, k.Config, k.ModulesDir)
	return nil
}

func absPath(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// pathIfExists makes p absolute when it names a file or directory; other
// values (package and policy names) stay as they are.
func pathIfExists(p string) string {
	if _, err := os.Stat(p); err == nil {
		return absPath(p)
	}
	return p
}
