package clh

// The subset of cloud-hypervisor's REST API (vmm/src/api/openapi/
// cloud-hypervisor.yaml) the launcher uses. Field names follow the OpenAPI
// schema; omitempty keeps defaults to the VMM.

// VmmPingResponse answers GET /vmm.ping.
type VmmPingResponse struct {
	BuildVersion string   `json:"build_version,omitempty"`
	Version      string   `json:"version"`
	Pid          int64    `json:"pid,omitempty"`
	Features     []string `json:"features,omitempty"`
}

// VMState is VmInfo.state.
type VMState string

// VM states.
const (
	StateCreated  VMState = "Created"
	StateRunning  VMState = "Running"
	StateShutdown VMState = "Shutdown"
	StatePaused   VMState = "Paused"
)

// VmInfo answers GET /vm.info.
type VmInfo struct {
	State VMState `json:"state"`
}

// VmConfig is the body of PUT /vm.create.
type VmConfig struct {
	CPUs     CpusConfig      `json:"cpus"`
	Memory   MemoryConfig    `json:"memory"`
	Payload  PayloadConfig   `json:"payload"`
	Disks    []DiskConfig    `json:"disks,omitempty"`
	FS       []FsConfig      `json:"fs,omitempty"`
	Serial   *ConsoleConfig  `json:"serial,omitempty"`
	Console  *ConsoleConfig  `json:"console,omitempty"`
	Vsock    *VsockConfig    `json:"vsock,omitempty"`
	Platform *PlatformConfig `json:"platform,omitempty"`
}

// CpusConfig is VmConfig.cpus.
type CpusConfig struct {
	BootVCPUs int `json:"boot_vcpus"`
	MaxVCPUs  int `json:"max_vcpus"`
}

// MemoryConfig is VmConfig.memory; Size is in bytes.
type MemoryConfig struct {
	Size   int64 `json:"size"`
	Shared bool  `json:"shared,omitempty"`
}

// PayloadConfig is VmConfig.payload; HostData is 64 hex characters.
type PayloadConfig struct {
	Kernel    string `json:"kernel,omitempty"`
	Initramfs string `json:"initramfs,omitempty"`
	Cmdline   string `json:"cmdline,omitempty"`
	IGVM      string `json:"igvm,omitempty"`
	HostData  string `json:"host_data,omitempty"`
}

// DiskConfig is one of VmConfig.disks.
type DiskConfig struct {
	Path     string `json:"path"`
	ReadOnly bool   `json:"readonly,omitempty"`
	ID       string `json:"id,omitempty"`
}

// FsConfig is one of VmConfig.fs (a virtio-fs device served by virtiofsd).
type FsConfig struct {
	Tag       string `json:"tag"`
	Socket    string `json:"socket"`
	NumQueues int    `json:"num_queues"`
	QueueSize int    `json:"queue_size"`
	ID        string `json:"id,omitempty"`
}

// Console modes.
const (
	ConsoleOff  = "Off"
	ConsoleFile = "File"
	ConsoleTty  = "Tty"
	ConsoleNull = "Null"
)

// ConsoleConfig is VmConfig.serial and VmConfig.console.
type ConsoleConfig struct {
	Mode string `json:"mode"`
	File string `json:"file,omitempty"`
}

// VsockConfig is VmConfig.vsock: the hybrid vsock unix socket.
type VsockConfig struct {
	CID    int64  `json:"cid"`
	Socket string `json:"socket"`
}

// PlatformConfig is VmConfig.platform.
type PlatformConfig struct {
	SevSnp bool `json:"sev_snp,omitempty"`
}
