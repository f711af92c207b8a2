"""The Kubernetes Pod Security Standards, "baseline" and "restricted" levels, as checks on a pod
spec (https://kubernetes.io/docs/concepts/security/pod-security-standards/, policy version 1.37).

``violations(pod_spec)`` lists every rule a pod breaks, in the words of the standard, so a
failing test says what to fix. Pod-level settings count for every container unless a container
overrides them, as in the admission controller.
"""

from __future__ import annotations

from typing import Any

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def _containers(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(field) or []:
            found.append((f"{field}[{container.get('name')}]", container))
    return found


def _effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod.get("securityContext") or {}).get(key)


def baseline_violations(pod: dict[str, Any]) -> list[str]:
    found = []
    pod_sc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            found.append(f"host namespaces: {field} must be unset or false")
    if (pod_sc.get("windowsOptions") or {}).get("hostProcess"):
        found.append("HostProcess: pod windowsOptions.hostProcess must not be true")
    for volume in pod.get("volumes") or []:
        if "hostPath" in volume:
            found.append(f"HostPath volumes: volume {volume.get('name')} is a hostPath")
    for key, value in (pod_sc.get("seLinuxOptions") or {}).items():
        if key in ("user", "role") and value:
            found.append(f"SELinux: pod seLinuxOptions.{key} must be unset")
    for sysctl in pod_sc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            found.append(f"Sysctls: {sysctl.get('name')} is not in the safe set")
    if (pod_sc.get("seccompProfile") or {}).get("type") == "Unconfined":
        found.append("Seccomp: pod seccompProfile must not be Unconfined")
    for where, container in _containers(pod):
        sc = container.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f"Privileged containers: {where} is privileged")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            found.append(f"HostProcess: {where} windowsOptions.hostProcess must not be true")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            found.append(f"Capabilities: {where} adds {sorted(added - BASELINE_CAPABILITIES)}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                found.append(f"Host ports: {where} uses hostPort {port['hostPort']}")
        if sc.get("procMount") not in (None, "Default"):
            found.append(f"/proc mount type: {where} procMount must be Default")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            found.append(f"Seccomp: {where} seccompProfile must not be Unconfined")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, "RuntimeDefault", "Localhost"):
            found.append(f"AppArmor: {where} profile must be RuntimeDefault or Localhost")
    return found


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    found = baseline_violations(pod)
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"Volume types: volume {volume.get('name')} is {sorted(kinds)}")
    pod_sc = pod.get("securityContext") or {}
    if pod_sc.get("runAsUser") == 0:
        found.append("Running as non-root user: pod runAsUser must not be 0")
    for where, container in _containers(pod):
        sc = container.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"Privilege escalation: {where} must set allowPrivilegeEscalation: false")
        if _effective(pod, container, "runAsNonRoot") is not True:
            found.append(f"Running as non-root: {where} must run with runAsNonRoot: true")
        if sc.get("runAsUser") == 0:
            found.append(f"Running as non-root user: {where} runAsUser must not be 0")
        seccomp = (_effective(pod, container, "seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"Seccomp: {where} needs seccompProfile RuntimeDefault or Localhost, has {seccomp}")
        capabilities = sc.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"Capabilities: {where} must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"Capabilities: {where} may add only NET_BIND_SERVICE")
    return found
