# Confidential image default: nothing runs until the pod's own policy
# arrives through SetPolicy (and matches the SNP report's HOST_DATA).
package agent_policy

default CreateContainerRequest := false
default StartContainerRequest := false
default RemoveContainerRequest := false
default ExecProcessRequest := false
default SignalProcessRequest := false
default WaitProcessRequest := false
default UpdateContainerRequest := false
default UpdateEphemeralMountsRequest := false
default StatsContainerRequest := false
default PauseContainerRequest := false
default ResumeContainerRequest := false
default RemoveStaleVirtiofsShareMountsRequest := false
default GetDiagnosticDataRequest := false
default WriteStreamRequest := false
default ReadStreamRequest := false
default CloseStdinRequest := false
default TtyWinResizeRequest := false
default UpdateInterfaceRequest := false
default UpdateRoutesRequest := false
default ListInterfacesRequest := false
default ListRoutesRequest := false
default AddARPNeighborsRequest := false
default GetIPTablesRequest := false
default SetIPTablesRequest := false
default GetMetricsRequest := false
default MemAgentMemcgConfig := false
default MemAgentCompactConfig := false
default CreateSandboxRequest := false
default DestroySandboxRequest := false
default OnlineCPUMemRequest := false
default ReseedRandomDevRequest := false
default GuestDetailsRequest := false
default MemHotplugByProbeRequest := false
default SetGuestDateTimeRequest := false
default CopyFileRequest := false
default GetOOMEventRequest := false
default AddSwapRequest := false
default AddSwapPathRequest := false
default VolumeStatsRequest := false
default ResizeVolumeRequest := false
default SetPolicyRequest := true
