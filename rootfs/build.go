package rootfs

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/cocoon-containers/cocoon/rootfs/cpio"
	"github.com/cocoon-containers/cocoon/rootfs/kernel"
	"github.com/cocoon-containers/cocoon/rootfs/kmod"
	"github.com/cocoon-containers/cocoon/rootfs/verity"
)

// DefaultModules are the modules the guest agent needs with Debian's kernel,
// where every virtio driver is a module.
var DefaultModules = []string{
	"virtio_pci", "virtio_mmio", "virtio_console", "virtio_blk", "virtio_net",
	"vsock", "vmw_vsock_virtio_transport", "virtiofs", "9p", "9pnet_virtio",
	"dm_verity", "overlay", "erofs", "sev-guest",
}

// DefaultOptionalModules may be missing from a kernel without failing the build.
var DefaultOptionalModules = []string{"sev-guest"}

// RequiredKernelConfig lists options the guest cannot boot without.
var RequiredKernelConfig = []string{
	"CONFIG_BLK_DEV_INITRD", "CONFIG_DEVTMPFS", "CONFIG_VIRTIO", "CONFIG_VIRTIO_CONSOLE",
	"CONFIG_DM_VERITY", "CONFIG_OVERLAY_FS", "CONFIG_CGROUPS",
}

// Config is the build configuration (TOML).
type Config struct {
	// Agent is the static cocoon-agent binary (becomes /init).
	Agent string `toml:"agent"`
	// Kernel is a Debian package name (fetched with apt-get download), a
	// .deb, an Azure Linux .rpm, or an unpacked package tree.
	// Empty means Debian's linux-image-amd64.
	Kernel string `toml:"kernel"`
	// KernelCache holds downloaded and unpacked packages
	// (DefaultKernelCache when empty).
	KernelCache string `toml:"kernel_cache"`
	// Modules to carry; DefaultModules when nil (the key is absent), none
	// when empty but not nil (modules = [], a kernel with everything built
	// in). Dependencies come along.
	Modules         []string `toml:"modules"`
	OptionalModules []string `toml:"optional_modules"`
	// ModuleParams are written after a module's path in modules.load
	// (e.g. {dm_verity = "require_signatures=0"}).
	ModuleParams map[string]string `toml:"module_params"`
	// DefaultPolicy is a Rego file; "allow-all" or "allow-only-setpolicy"
	// name the embedded ones (allow-all when empty).
	DefaultPolicy string `toml:"default_policy"`
	// AgentConfig is copied to /etc/cocoon/agent.toml when set.
	AgentConfig string `toml:"agent_config"`
	// Cmdline is the base kernel command line the launcher passes.
	Cmdline string        `toml:"cmdline"`
	Verity  *VerityConfig `toml:"verity"`
	// SkipAgentCheck allows a non-agent /init (tests, hello-world inits).
	SkipAgentCheck bool `toml:"skip_agent_check"`

	dir string // directory relative paths resolve against
}

// VerityConfig asks for a root filesystem image with a dm-verity tree.
type VerityConfig struct {
	Source string `toml:"source"` // directory to pack
	FS     string `toml:"fs"`     // erofs (default) or ext4
	Salt   string `toml:"salt"`   // hex; default: SHA-256 of the image
	// UUID of the filesystem and the verity superblock (fixed default).
	UUID string `toml:"uuid"`
	// Cmdline picks the measured command-line fragment: "cocoon" (default,
	// cocoon.rootfs_verity*= parameters the agent reads) or "dm-mod" (a
	// dm-mod.create= table the kernel sets up itself, root=/dev/dm-0).
	Cmdline string `toml:"cmdline"`
	// DataDevice and HashDevice name the guest block devices in the
	// dm-mod.create table (default /dev/vda and /dev/vdb).
	DataDevice string `toml:"data_device"`
	HashDevice string `toml:"hash_device"`
}

// LoadConfig reads a TOML build configuration; relative paths in it resolve
// against the file's directory.
func LoadConfig(p string) (*Config, error) {
	var c Config
	md, err := toml.DecodeFile(p, &c)
	if err != nil {
		return nil, fmt.Errorf("read build config %s: %w", p, err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		return nil, fmt.Errorf("build config %s: unknown keys %v", p, un)
	}
	c.dir = filepath.Dir(p)
	return &c, nil
}

func (c *Config) abs(p string) string {
	if p == "" || filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

// Digest is a file and its SHA-256.
type Digest struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
}

// Manifest describes one build.
type Manifest struct {
	KernelVersion   string            `json:"kernel_version"`
	Inputs          map[string]Digest `json:"inputs"`
	Outputs         map[string]Digest `json:"outputs"`
	Modules         []string          `json:"modules"`
	Cmdline         string            `json:"cmdline"`
	VerityCmdline   string            `json:"verity_cmdline,omitempty"`
	VerityDMCreate  string            `json:"verity_dm_create,omitempty"`
	ReferenceValues ReferenceValues   `json:"reference_values"`
}

// ReferenceValues are what a KBS resource policy checks.
type ReferenceValues struct {
	SimulatedMeasurement  string `json:"simulated_measurement"`
	DefaultPolicyHostData string `json:"default_policy_host_data"`
	VerityRootHash        string `json:"verity_root_hash,omitempty"`
}

// Output names inside the output directory.
const (
	KernelFile      = "vmlinuz"
	InitrdFile      = "cocoon-initrd.img"
	VerityImageFile = "rootfs.img"
	VerityHashFile  = "rootfs.img.verity"
	ManifestFile    = "manifest.json"
	modulesLoadPath = "etc/cocoon/modules.load"
	policyPath      = "etc/cocoon/default-policy.rego"
	agentConfigPath = "etc/cocoon/agent.toml"
	// DefaultKernelCache keeps downloaded and unpacked kernel packages.
	DefaultKernelCache = "/var/cache/cocoon/kernel"
	defaultVerityUID   = "c0c00000-0000-4000-8000-000000000001"
)

// Build makes the image set in outDir. Progress lines go to progress.
func Build(ctx context.Context, c *Config, outDir string, progress io.Writer) (*Manifest, error) {
	if progress == nil {
		progress = io.Discard
	}
	if c.Agent == "" {
		return nil, errors.New("build config names no agent binary")
	}
	agentPath := c.abs(c.Agent)
	if !c.SkipAgentCheck {
		if err := CheckAgent(agentPath); err != nil {
			return nil, err
		}
	}
	k, err := c.fetchKernel(ctx, progress)
	if err != nil {
		return nil, err
	}
	if k.Config != "" {
		if err := kernel.CheckConfig(k.Config, RequiredKernelConfig); err != nil {
			return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
		}
	} else {
		fmt.Fprintf(progress, "kernel %s comes without its config: required options not checked\n", k.Version)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	m := &Manifest{KernelVersion: k.Version, Inputs: map[string]Digest{}, Outputs: map[string]Digest{}, Cmdline: BaseCmdline(c.Cmdline)}

	arc := cpio.New()
	agent, err := os.ReadFile(agentPath)
	if err != nil {
		return nil, fmt.Errorf("read agent: %w", err)
	}
	m.Inputs["agent"] = digestOf(filepath.Base(agentPath), agent)
	if err := arc.AddFile("/init", 0o755, agent); err != nil {
		return nil, err
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/run", "/tmp", "/etc/cocoon"} {
		if err := arc.AddDir(d, 0o755); err != nil {
			return nil, err
		}
	}

	policy, policyName, err := c.policy()
	if err != nil {
		return nil, err
	}
	m.Inputs["default_policy"] = digestOf(policyName, policy)
	if err := arc.AddFile(policyPath, 0o644, policy); err != nil {
		return nil, err
	}
	if c.AgentConfig != "" {
		b, err := os.ReadFile(c.abs(c.AgentConfig))
		if err != nil {
			return nil, fmt.Errorf("read agent config: %w", err)
		}
		unknown, err := CheckAgentConfig(b)
		if err != nil {
			return nil, fmt.Errorf("agent config %s: %w", c.AgentConfig, err)
		}
		for _, k := range unknown {
			fmt.Fprintf(progress, "agent config %s: key %q is not one cocoon-rootfs knows; copied as is\n", c.AgentConfig, k)
		}
		m.Inputs["agent_config"] = digestOf(filepath.Base(c.AgentConfig), b)
		if err := arc.AddFile(agentConfigPath, 0o644, b); err != nil {
			return nil, err
		}
	}

	fmt.Fprintf(progress, "resolving kernel modules for %s\n", k.Version)
	mods, err := c.addModules(arc, k, m)
	if err != nil {
		return nil, err
	}
	m.Modules = mods

	fmt.Fprintln(progress, "writing initrd")
	// gzip's default level: -9 takes eight times longer here for 0.2%
	// less. The header carries no name and no time (reproducible).
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := arc.WriteTo(zw); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(outDir, InitrdFile), gz.Bytes(), 0o644); err != nil {
		return nil, err
	}
	m.Outputs["initrd"] = digestOf(InitrdFile, gz.Bytes())

	kb, err := os.ReadFile(k.Vmlinuz)
	if err != nil {
		return nil, fmt.Errorf("read kernel image: %w", err)
	}
	if k.Package != "" {
		m.Inputs["kernel_package"] = fileDigest(k.Package)
	} else {
		m.Inputs["kernel_image"] = digestOf(filepath.Base(k.Vmlinuz), kb)
	}
	if err := os.WriteFile(filepath.Join(outDir, KernelFile), kb, 0o644); err != nil {
		return nil, err
	}
	m.Outputs["kernel"] = digestOf(KernelFile, kb)

	if c.Verity != nil {
		root, cmd, err := c.buildVerity(ctx, outDir, progress, m)
		if err != nil {
			return nil, err
		}
		m.ReferenceValues.VerityRootHash = root
		m.VerityCmdline = cmd
	}

	kSum := sha256.Sum256(kb)
	iSum := sha256.Sum256(gz.Bytes())
	// The command line a launcher boots in simulated mode: the base,
	// the verity fragment, then the attestation mode it adds itself.
	meas := SimulatedMeasurement(kSum, iSum, m.Cmdline+appendSpace(m.VerityCmdline)+" "+SimulatedAttestationParam)
	m.ReferenceValues.SimulatedMeasurement = hex.EncodeToString(meas[:])
	hd := PolicyHostData(policy)
	m.ReferenceValues.DefaultPolicyHostData = hex.EncodeToString(hd[:])

	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(outDir, ManifestFile), append(mb, '\n'), 0o644); err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "initrd %s: %d bytes, %d modules\n", InitrdFile, gz.Len(), len(mods))
	return m, nil
}

func appendSpace(s string) string {
	if s == "" {
		return ""
	}
	return " " + s
}

func (c *Config) fetchKernel(ctx context.Context, progress io.Writer) (*kernel.Kernel, error) {
	src := c.Kernel
	if src == "" {
		src = kernel.DefaultPackage
	} else if _, err := os.Stat(c.abs(src)); err == nil {
		src = c.abs(src) // a file or tree, not a package name
	}
	cache := c.abs(c.KernelCache)
	if cache == "" {
		cache = DefaultKernelCache
	}
	return FetchKernel(ctx, src, cache, progress)
}

// FetchKernel returns an unpacked kernel from src: a Debian package name
// (downloaded into cacheDir with apt-get download), a .deb, an RPM, or an
// already unpacked tree. Packages are unpacked under cacheDir once.
func FetchKernel(ctx context.Context, src, cacheDir string, progress io.Writer) (*kernel.Kernel, error) {
	switch {
	case strings.HasSuffix(src, ".deb"):
		return kernel.UnpackDeb(ctx, src, filepath.Join(cacheDir, strings.TrimSuffix(filepath.Base(src), ".deb")), progress)
	case strings.HasSuffix(src, ".rpm"):
		return kernel.UnpackRPM(ctx, src, filepath.Join(cacheDir, strings.TrimSuffix(filepath.Base(src), ".rpm")), progress)
	}
	if st, err := os.Stat(src); err == nil && st.IsDir() {
		return kernel.Find(src)
	}
	return kernel.FetchDebian(ctx, cacheDir, src, progress)
}

func (c *Config) policy() ([]byte, string, error) {
	switch c.DefaultPolicy {
	case "", "allow-all":
		return AllowAllPolicy(), "allow-all.rego", nil
	case "allow-only-setpolicy":
		return AllowOnlySetPolicy(), "allow-only-setpolicy.rego", nil
	}
	b, err := os.ReadFile(c.abs(c.DefaultPolicy))
	if err != nil {
		return nil, "", fmt.Errorf("read default policy: %w", err)
	}
	return b, filepath.Base(c.DefaultPolicy), nil
}

// addModules copies the resolved modules, decompressed, into the archive
// under /lib/modules/<version>/ and writes the load list.
func (c *Config) addModules(arc *cpio.Archive, k *kernel.Kernel, m *Manifest) ([]string, error) {
	names := c.Modules
	opt := c.OptionalModules
	if names == nil {
		names, opt = DefaultModules, append(opt, DefaultOptionalModules...)
	}
	params := map[string]string{}
	for mod, p := range c.ModuleParams {
		if strings.ContainsAny(p, "\n\r#") {
			return nil, fmt.Errorf("module_params for %s: parameters must be one line without #", mod)
		}
		params[kmod.Name(mod)] = strings.TrimSpace(p)
	}
	var load strings.Builder
	load.WriteString("# kernel modules in load order, written by cocoon-rootfs\n")
	var mods []string
	if len(names) > 0 {
		if k.ModulesDir == "" {
			return nil, fmt.Errorf("kernel %s ships no modules: set modules = [] if it has everything built in", k.Version)
		}
		idx, err := kmod.Load(k.ModulesDir)
		if err != nil {
			return nil, err
		}
		optional := map[string]bool{}
		for _, o := range opt {
			optional[kmod.Name(o)] = true
		}
		files, err := idx.Resolve(names, optional)
		if err != nil {
			return nil, fmt.Errorf("kernel %s: %w", k.Version, err)
		}
		for _, rel := range files {
			b, err := kmod.ReadModule(filepath.Join(k.ModulesDir, rel))
			if err != nil {
				return nil, fmt.Errorf("read module: %w", err)
			}
			name := kmod.Name(rel)
			inInitrd := path.Join("/lib/modules", k.Version, filepath.ToSlash(kmod.PlainName(rel)))
			if err := arc.AddFile(inInitrd, 0o644, b); err != nil {
				return nil, err
			}
			m.Inputs["module/"+name] = digestOf(filepath.Base(rel), b)
			load.WriteString(inInitrd)
			if p := params[name]; p != "" {
				load.WriteString(" " + p)
			}
			load.WriteString("\n")
			mods = append(mods, name)
		}
	}
	if err := arc.AddFile(modulesLoadPath, 0o644, []byte(load.String())); err != nil {
		return nil, err
	}
	return mods, nil
}

func (c *Config) buildVerity(ctx context.Context, outDir string, progress io.Writer, m *Manifest) (string, string, error) {
	v := c.Verity
	src := c.abs(v.Source)
	if st, err := os.Stat(src); err != nil || !st.IsDir() {
		return "", "", fmt.Errorf("verity source %q is not a directory", v.Source)
	}
	fsType := orDefault(v.FS, "erofs")
	if fsType != "erofs" && fsType != "ext4" {
		return "", "", fmt.Errorf("verity fs %q: want erofs or ext4", v.FS)
	}
	cmdStyle := orDefault(v.Cmdline, "cocoon")
	if cmdStyle != "cocoon" && cmdStyle != "dm-mod" {
		return "", "", fmt.Errorf("verity cmdline %q: want cocoon or dm-mod", v.Cmdline)
	}
	dataDev, hashDev := orDefault(v.DataDevice, "/dev/vda"), orDefault(v.HashDevice, "/dev/vdb")
	for _, d := range []string{dataDev, hashDev} {
		if !strings.HasPrefix(d, "/dev/") || strings.ContainsAny(d, " ,\"\t\n") {
			return "", "", fmt.Errorf("verity device %q: want a /dev path without spaces or commas", d)
		}
	}
	uuid := v.UUID
	if uuid == "" {
		uuid = defaultVerityUID
	}
	var u [16]byte
	ub, err := hex.DecodeString(strings.ReplaceAll(uuid, "-", ""))
	if err != nil || len(ub) != 16 {
		return "", "", fmt.Errorf("verity uuid %q is not a UUID", uuid)
	}
	copy(u[:], ub)
	salt, err := hex.DecodeString(v.Salt)
	if err != nil {
		return "", "", fmt.Errorf("verity salt: %w", err)
	}
	img := filepath.Join(outDir, VerityImageFile)
	os.Remove(img)
	fmt.Fprintf(progress, "making %s image from %s\n", fsType, v.Source)
	if fsType == "erofs" {
		cmd := exec.CommandContext(ctx, "mkfs.erofs", "--quiet", "-T0", "-U"+uuid, "--all-root", img, src)
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("mkfs.erofs: %w: %s", err, out)
		}
	} else if err := makeExt4(ctx, img, src, uuid); err != nil {
		return "", "", err
	}
	// Pad the image to whole 4 KiB blocks.
	st, err := os.Stat(img)
	if err != nil {
		return "", "", err
	}
	if rem := st.Size() % 4096; rem != 0 {
		if err := os.Truncate(img, st.Size()+4096-rem); err != nil {
			return "", "", err
		}
	}
	if len(salt) == 0 {
		s := fileDigest(img)
		salt, _ = hex.DecodeString(s.SHA256)
	}
	fmt.Fprintln(progress, "computing dm-verity hash tree")
	root, err := FormatFile(img, filepath.Join(outDir, VerityHashFile), verity.Params{Salt: salt, UUID: u})
	if err != nil {
		return "", "", err
	}
	m.Outputs["verity_image"] = fileDigest(img)
	m.Outputs["verity_hash"] = fileDigest(filepath.Join(outDir, VerityHashFile))
	rootHex, saltHex := hex.EncodeToString(root.RootHash), hex.EncodeToString(salt)
	// The tree starts one hash block in, after veritysetup's superblock.
	m.VerityDMCreate = fmt.Sprintf(`dm-mod.create="cocoon-rootfs,,,ro,0 %d verity 1 %s %s 4096 4096 %d 1 sha256 %s %s" root=/dev/dm-0 rootfstype=%s`,
		root.DataBlocks*8, dataDev, hashDev, root.DataBlocks, rootHex, saltHex, fsType)
	frag := fmt.Sprintf("cocoon.rootfs_verity=%s cocoon.rootfs_verity_salt=%s cocoon.rootfs_verity_blocks=%d cocoon.rootfs_fstype=%s",
		rootHex, saltHex, root.DataBlocks, fsType)
	if cmdStyle == "dm-mod" {
		frag = m.VerityDMCreate
	}
	return rootHex, frag, nil
}

// makeExt4 packs src into an ext4 image that depends only on the tree's
// names, contents and modes: fixed UUID and hash seed, fake creation time,
// and every inode's owner and times reset with debugfs afterwards (mkfs.ext4
// -d copies them from the source, and a ctime cannot be set in the source).
func makeExt4(ctx context.Context, img, src, uuid string) error {
	size, err := dirSize(src)
	if err != nil {
		return err
	}
	mib := size/(1<<20)*2 + 16
	env := append(os.Environ(), "E2FSPROGS_FAKE_TIME=1")
	mk := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-d", src, "-U", uuid,
		"-E", "hash_seed="+uuid+",root_owner=0:0", "-O", "^has_journal,^metadata_csum_seed", img, fmt.Sprintf("%dM", mib))
	mk.Env = env
	if out, err := mk.CombinedOutput(); err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, out)
	}
	var cmds strings.Builder
	reset := func(p string) {
		for _, f := range []string{"atime", "mtime", "ctime", "crtime", "uid", "gid"} {
			fmt.Fprintf(&cmds, "sif \"%s\" %s 0\n", p, f)
		}
	}
	reset("/")
	reset("/lost+found")
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == src {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if strings.ContainsAny(rel, "\"\n\\") {
			return fmt.Errorf("ext4 image: file name %q has a quote, backslash or newline", rel)
		}
		reset("/" + filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return err
	}
	cmdFile := img + ".debugfs"
	if err := os.WriteFile(cmdFile, []byte(cmds.String()), 0o600); err != nil {
		return err
	}
	defer os.Remove(cmdFile)
	dbg := exec.CommandContext(ctx, "debugfs", "-w", "-f", cmdFile, img)
	dbg.Env = env
	out, err := dbg.CombinedOutput()
	if err != nil {
		return fmt.Errorf("debugfs: %w: %s", err, out)
	}
	// debugfs exits 0 even when a command fails: besides its banner and
	// the echoed commands, any line is an error.
	for _, l := range strings.Split(string(out), "\n") {
		if l != "" && !strings.HasPrefix(l, "debugfs ") && !strings.HasPrefix(l, "debugfs: sif ") {
			return fmt.Errorf("debugfs: %s", l)
		}
	}
	return nil
}

// FormatFile computes a hash tree for the file data into hash.
func FormatFile(data, hash string, p verity.Params) (*verity.Result, error) {
	in, err := os.Open(data)
	if err != nil {
		return nil, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return nil, err
	}
	out, err := os.Create(hash)
	if err != nil {
		return nil, err
	}
	res, err := verity.Format(in, st.Size(), out, p)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return res, err
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		n += fi.Size() + 4096
		return nil
	})
	return n, err
}

func digestOf(name string, b []byte) Digest {
	s := sha256.Sum256(b)
	return Digest{Path: name, SHA256: hex.EncodeToString(s[:]), Size: int64(len(b))}
}

func fileDigest(p string) Digest {
	f, err := os.Open(p)
	if err != nil {
		return Digest{Path: filepath.Base(p)}
	}
	defer f.Close()
	h := sha256.New()
	n, _ := io.Copy(h, f)
	return Digest{Path: filepath.Base(p), SHA256: hex.EncodeToString(h.Sum(nil)), Size: n}
}

// CheckAgentConfig checks the values of the agent configuration keys of the
// shared contract (the kernel command-line keys without "cocoon."), and
// returns the keys it does not know, sorted.
func CheckAgentConfig(b []byte) (unknown []string, err error) {
	var cfg map[string]any
	if err := toml.Unmarshal(b, &cfg); err != nil {
		return nil, err
	}
	hexLen := func(k string, n int) func(string) error {
		return func(v string) error {
			if d, err := hex.DecodeString(v); err != nil || len(d) != n {
				return fmt.Errorf("%s: want %d hex digits", k, 2*n)
			}
			return nil
		}
	}
	checks := map[string]func(string) error{
		"server_addr": func(v string) error {
			for _, s := range []string{"unix://", "vsock://", "serial://"} {
				if strings.HasPrefix(v, s) {
					return nil
				}
			}
			return fmt.Errorf("server_addr %q: want unix://, vsock:// or serial://", v)
		},
		"log_level": func(v string) error {
			switch v {
			case "debug", "info", "warn", "error":
				return nil
			}
			return fmt.Errorf("log_level %q: want debug, info, warn or error", v)
		},
		"kbs_url": func(v string) error {
			if !strings.HasPrefix(v, "http://") && !strings.HasPrefix(v, "https://") {
				return fmt.Errorf("kbs_url %q: want an http or https URL", v)
			}
			return nil
		},
		"attestation": func(v string) error {
			switch v {
			case "snp", "simulated", "none":
				return nil
			}
			return fmt.Errorf("attestation %q: want snp, simulated or none", v)
		},
		"default_policy": func(v string) error {
			if !strings.HasPrefix(v, "/") {
				return fmt.Errorf("default_policy %q: want an absolute path in the guest", v)
			}
			return nil
		},
		"sim_host_data":   hexLen("sim_host_data", 32),
		"sim_measurement": hexLen("sim_measurement", 48),
	}
	keys := make([]string, 0, len(cfg))
	for k := range cfg {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		check, ok := checks[k]
		if !ok {
			unknown = append(unknown, k)
			continue
		}
		v, ok := cfg[k].(string)
		if !ok {
			return nil, fmt.Errorf("%s: want a string", k)
		}
		if err := check(v); err != nil {
			return nil, err
		}
	}
	return unknown, nil
}

// ErrBadAgent reports an /init candidate that cannot run as the guest agent.
var ErrBadAgent = errors.New("unusable agent binary")

// CheckAgent fails unless p is a statically linked Go binary built with cgo
// (libcontainer's nsenter needs cgo; the initrd has no dynamic loader).
func CheckAgent(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("%w: %s is not an ELF executable: %v", ErrBadAgent, p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("%w: %s is dynamically linked; build it static (make build)", ErrBadAgent, p)
		}
	}
	bi, err := buildinfo.ReadFile(p)
	if err != nil {
		return fmt.Errorf("%w: %s has no Go build information: %v", ErrBadAgent, p, err)
	}
	for _, s := range bi.Settings {
		if s.Key == "CGO_ENABLED" {
			if s.Value != "1" {
				return fmt.Errorf("%w: %s was built without cgo (CGO_ENABLED=%s); libcontainer's nsenter needs cgo", ErrBadAgent, p, s.Value)
			}
			return nil
		}
	}
	return fmt.Errorf("%w: %s does not record CGO_ENABLED", ErrBadAgent, p)
}
