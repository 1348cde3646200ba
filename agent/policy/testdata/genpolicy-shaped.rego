# Shaped like Kata genpolicy output: Rego v0 with future.keywords, rules
# checking requests against policy_data, state kept in data.pstate.
package agent_policy

import future.keywords.in
import future.keywords.if
import future.keywords.every

default AllowRequestsFailingPolicy := false
default CreateContainerRequest := {"allowed": false}
default RemoveContainerRequest := {"allowed": false}
default ExecProcessRequest := false
default StartContainerRequest := true
default WaitProcessRequest := true
default ReadStreamRequest := true
default SetPolicyRequest := false

CreateContainerRequest := {"ops": ops, "allowed": true} if {
    image_allowed
    args_allowed
    not container_known
    print("CreateContainerRequest: container", input.container_id, "allowed")
    ops := [{"op": "add", "path": concat("", ["/", input.container_id]), "value": input.OCI.Annotations["io.kubernetes.cri.container-name"]}]
}

image_allowed if {
    some c in policy_data.containers
    c.image == input.OCI.Annotations["io.kubernetes.cri.image-name"]
}

args_allowed if {
    some c in policy_data.containers
    c.args == input.OCI.Process.Args
}

container_known if {
    data.pstate[input.container_id]
}

RemoveContainerRequest := {"ops": ops, "allowed": true} if {
    container_known
    ops := [{"op": "remove", "path": concat("", ["/", input.container_id])}]
}

ExecProcessRequest if {
    container_known
    some c in policy_data.containers
    c.exec_allowed
    print("exec allowed")
}

policy_data := {
    "containers": [
        {
            "image": "registry.local/busybox:latest",
            "args": ["/bin/sh", "-c", "echo hello"],
            "exec_allowed": false,
        },
    ],
}
