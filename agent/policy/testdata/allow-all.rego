package agent_policy

import rego.v1

default CreateContainerRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default ExecProcessRequest := true
default SignalProcessRequest := true
default WaitProcessRequest := true
default UpdateContainerRequest := true
default UpdateEphemeralMountsRequest := true
default StatsContainerRequest := true
default PauseContainerRequest := true
default ResumeContainerRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default GetDiagnosticDataRequest := true
default WriteStreamRequest := true
default ReadStreamRequest := true
default CloseStdinRequest := true
default TtyWinResizeRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default AddARPNeighborsRequest := true
default GetIPTablesRequest := true
default SetIPTablesRequest := true
default GetMetricsRequest := true
default MemAgentMemcgConfig := true
default MemAgentCompactConfig := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default OnlineCPUMemRequest := true
default ReseedRandomDevRequest := true
default GuestDetailsRequest := true
default MemHotplugByProbeRequest := true
default SetGuestDateTimeRequest := true
default CopyFileRequest := true
default GetOOMEventRequest := true
default AddSwapRequest := true
default AddSwapPathRequest := true
default VolumeStatsRequest := true
default ResizeVolumeRequest := true
default SetPolicyRequest := true
