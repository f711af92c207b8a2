"""The pods of a Dataflow's Jobs as local processes, each on its own simulated host.

Each Job has one pod (``completions: 1``), named ``<job>-<suffix>`` as the Job controller names
it. Every pod gets a network namespace wired to a private bridge (inside a namespace of its own,
so the machine's network is untouched), the hostname its pod spec says (``unshare --uts``), and
a hosts file (``/etc/netns/<ns>/hosts``) that resolves ``<hostname>.<subdomain>.<namespace>.svc``
names as the headless Service's DNS would. Its container command runs with the environment
Kubernetes would give it from the Job's pod template: literal values as written, downward-API
fields filled in, and each volume mount mapped to a local directory holding what the volume
would (ConfigMap keys, Secret keys, an emptyDir that lives as long as the pod, a
PersistentVolumeClaim's volume that outlives it: kept by claim name under the work directory).
"""

from __future__ import annotations

import base64
import functools
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUBNET = "10.254.77"


@functools.cache
def available() -> str | None:
    """Why pods cannot be simulated here, or ``None`` when they can (probed once)."""
    if os.geteuid() != 0:
        return "pod simulation needs root (network namespaces)"
    for tool in ("ip", "unshare", "hostname"):
        if shutil.which(tool) is None:
            return f"pod simulation needs the {tool!r} command"
    probe = f"mrprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "delete", probe], capture_output=True)
    return None


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class Pod:
    index: int
    name: str
    hostname: str
    subdomain: str
    template: dict[str, Any]
    netns: str
    ip: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    proc: subprocess.Popen[str] | None = None
    mounts: dict[str, str] = field(default_factory=dict)


class PodSimulation:
    """The pods of ``jobs`` (with ``children``: ConfigMaps and Secrets by name), pod ``i`` the
    one of ``jobs[i]``."""

    def __init__(self, jobs: list[dict[str, Any]], children: list[dict[str, Any]], workdir: Path) -> None:
        self.jobs = jobs
        self.objects = {(c["kind"], c["metadata"]["name"]): c for c in children}
        self.workdir = workdir
        self.tag = uuid.uuid4().hex[:6]
        self.switch = f"mrsw{self.tag}"
        self.namespace = jobs[0]["metadata"].get("namespace", "default")
        self.pods = []
        for i, job in enumerate(jobs):
            template = job["spec"]["template"]
            name = f"{job['metadata']['name']}-{self.tag[:5]}"
            self.pods.append(
                Pod(
                    i,
                    name,
                    template["spec"]["hostname"],
                    template["spec"]["subdomain"],
                    template,
                    f"mrpod{self.tag}{i}",
                    f"{SUBNET}.{10 + i}",
                    workdir / f"pod-{name}",
                )
            )

    # -- network -------------------------------------------------------------------------

    def __enter__(self) -> PodSimulation:
        _sh("ip", "netns", "add", self.switch)
        _sh("ip", "netns", "exec", self.switch, "ip", "link", "add", "br0", "type", "bridge")
        _sh("ip", "netns", "exec", self.switch, "ip", "link", "set", "br0", "up")
        domain = "cluster.local"
        hosts = "127.0.0.1 localhost\n" + "".join(
            f"{pod.ip} {pod.hostname}.{pod.subdomain}.{self.namespace}.svc.{domain} {pod.hostname}\n"
            for pod in self.pods
        )
        for pod in self.pods:
            _sh("ip", "netns", "add", pod.netns)
            outside, inside = f"mr{self.tag}{pod.index}a", f"mr{self.tag}{pod.index}b"
            _sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
            _sh("ip", "link", "set", outside, "netns", self.switch)
            _sh("ip", "link", "set", inside, "netns", pod.netns)
            _sh("ip", "netns", "exec", self.switch, "ip", "link", "set", outside, "master", "br0", "up")
            run = ("ip", "netns", "exec", pod.netns)
            _sh(*run, "ip", "link", "set", inside, "name", "eth0")
            _sh(*run, "ip", "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            _sh(*run, "ip", "link", "set", "eth0", "up")
            _sh(*run, "ip", "link", "set", "lo", "up")
            etc = Path("/etc/netns") / pod.netns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts)
            self._prepare(pod)
        return self

    def __exit__(self, *exc: Any) -> None:
        for pod in self.pods:
            self.kill(pod.index)
        for pod in self.pods:
            subprocess.run(["ip", "netns", "delete", pod.netns], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / pod.netns, ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", self.switch], capture_output=True)

    # -- the kubelet's part --------------------------------------------------------------

    def _volume_dir(self, pod: Pod, volume: dict[str, Any]) -> Path:
        name = volume["name"]
        if "persistentVolumeClaim" in volume:
            # The claim's volume outlives the pod: the next pod that mounts it finds its files.
            path = self.workdir / "claims" / volume["persistentVolumeClaim"]["claimName"]
            path.mkdir(parents=True, exist_ok=True)
            return path
        path = pod.root / "volumes" / name
        if path.exists():
            return path  # an emptyDir survives container restarts (not the pod)
        path.mkdir(parents=True)
        if "configMap" in volume:
            data = self.objects[("ConfigMap", volume["configMap"]["name"])].get("data", {})
            for key, text in data.items():
                (path / key).write_text(text)
        elif "secret" in volume:
            secret = self.objects[("Secret", volume["secret"]["secretName"])]
            for key, text in secret.get("data", {}).items():
                (path / key).write_bytes(base64.b64decode(text))
            for key, text in secret.get("stringData", {}).items():
                (path / key).write_text(text)
        return path

    def _prepare(self, pod: Pod) -> None:
        spec = pod.template["spec"]
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounts = {}
        for mount in container.get("volumeMounts", []):
            mounts[mount["mountPath"]] = str(self._volume_dir(pod, volumes[mount["name"]]))
        fields = {
            "metadata.name": pod.name,
            "metadata.namespace": self.namespace,
            "status.podIP": pod.ip,
        }
        fields.update(
            {f"metadata.labels['{key}']": value for key, value in pod.template["metadata"].get("labels", {}).items()}
        )
        env: dict[str, str] = {}
        for var in container.get("env", []):
            if "value" in var:
                value = var["value"]
            else:
                value = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
            # Paths inside mounted volumes point to the pod's local copy of that volume.
            for mount_path, local in mounts.items():
                if value == mount_path or value.startswith(mount_path + "/"):
                    value = local + value[len(mount_path) :]
            env[var["name"]] = value
        env["MILLRACE_TERMINATION_LOG"] = str(pod.root / "termination-log")
        pod.env = env
        pod.mounts = mounts
        command = container["command"] + container.get("args", [])
        # The image's console script is this interpreter's entry point of the same name.
        executable = Path(sys.executable).with_name(command[0])
        pod.command = [str(executable), *command[1:]]

    def start(self, index: int) -> subprocess.Popen[str]:
        pod = self.pods[index]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "MILLRACE_TEST_TAG": os.environ.get("MILLRACE_TEST_TAG", ""),
            **pod.env,
        }
        pod.proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                pod.netns,
                "unshare",
                "--uts",
                "sh",
                "-c",
                f'hostname "{pod.hostname}" && exec "$@"',
                "pod",
                *pod.command,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        return pod.proc

    def kill(self, index: int) -> None:
        proc = self.pods[index].proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 9)
        if proc is not None:
            try:
                proc.communicate(timeout=10)
            except Exception:
                pass

    def termination_message(self, index: int) -> str:
        path = self.pods[index].root / "termination-log"
        return path.read_text() if path.exists() else ""

    def ready(self, index: int) -> bool:
        """Whether pod ``index``'s readinessProbe (an HTTP GET) passes now: the request sent
        from inside the pod's network namespace to the named container port, as the kubelet
        sends it to the pod's IP; a status from 200 to 399 passes, as for the kubelet."""
        pod = self.pods[index]
        container = pod.template["spec"]["containers"][0]
        probe = container["readinessProbe"]["httpGet"]
        port = probe["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
        get = (
            "import sys, urllib.request\n"
            f"try: status = urllib.request.urlopen('http://127.0.0.1:{port}{probe['path']}', timeout=1).status\n"
            "except Exception: status = 0\n"
            "sys.exit(0 if 200 <= status < 400 else 1)"
        )
        probe_run = ["ip", "netns", "exec", pod.netns, sys.executable, "-c", get]
        return subprocess.run(probe_run, capture_output=True).returncode == 0

    def wait_ready(self, indexes: list[int], timeout: float) -> None:
        """Until every pod of ``indexes`` is ready (or one has ended, or the time is out)."""
        deadline = time.monotonic() + timeout
        while not all(self.ready(i) for i in indexes):
            ended = [i for i in indexes if self.pods[i].proc is not None and self.pods[i].proc.poll() is not None]
            if ended:
                raise AssertionError(f"pods {ended} ended before every pod was ready")
            if time.monotonic() > deadline:
                raise AssertionError(f"pods not ready within {timeout} s: {[i for i in indexes if not self.ready(i)]}")
            time.sleep(0.1)
