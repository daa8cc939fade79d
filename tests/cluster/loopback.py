"""A two-node Ray cluster on loopback for the tests: a head and a second node, each a `ray start
--block` process group the test owns, token authentication on, nothing bound beyond 127.0.0.1.

Ray's `ray start` turns a loopback --node-ip-address into the machine's network address (it
"resolves localhost" so that other machines could reach the node). The nodes here run the same
CLI with that one step switched off (START below), so every Ray process listens on and talks to
127.0.0.1 only; the driver joins with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, under which Ray's own
address lookup answers 127.0.0.1, and _node_ip_address 127.0.0.1 (LENET_EDGE_RAY_NODE_IP).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

START = (
    "import sys\n"
    "from ray._private import services\n"
    "services.resolve_ip_for_localhost = lambda host: host\n"
    "from ray.scripts.scripts import main\n"
    "sys.exit(main())\n"
)
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole node: `ray start --block`, its raylet and every worker it started."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def pids(self) -> set[int]:
        """The node's processes: its process group and everything they started (Ray's workers
        run in sessions of their own)."""
        return with_descendants(pids_in_group(self.proc.pid))


@dataclass
class Cluster:
    root: Path
    port: int
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def driver_env(self) -> dict[str, str]:
        return {**self.env, "RAY_ADDRESS": self.address, "LENET_EDGE_RAY_NODE_IP": "127.0.0.1"}

    def start_node(self, name: str, head: bool, cpus: int = 1, resources: str | None = None) -> Node:
        log = self.root / f"{name}.log"
        args = [
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={cpus}",
            "--disable-usage-stats",
        ]
        if head:
            args += [
                "--head",
                f"--port={self.port}",
                "--include-dashboard=false",
                f"--temp-dir={self.root / 'ray'}",
            ]
        else:
            args += [f"--address={self.address}"]
        if resources:
            args += [f"--resources={resources}"]
        env = {**self.env, "LENET_EDGE_NODE_NAME": name}
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # a node may join a cluster (START keeps it on loopback)
        with open(log, "w") as f:
            proc = subprocess.Popen(
                [sys.executable, "-c", START, *args],
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: killing it kills the node
            )
        node = Node(name, proc, log)
        self.nodes.append(node)
        return node

    def wait_for_nodes(self, n: int, timeout: float = 60) -> None:
        """Until the cluster reports n live nodes (asked through a driver on loopback)."""
        probe = (
            "import ray, sys\n"
            "ray.init(address=sys.argv[1], _node_ip_address='127.0.0.1', log_to_driver=False)\n"
            "print(sum(n['Alive'] for n in ray.nodes()))\n"
        )
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            for node in self.nodes:
                if not node.alive():
                    raise RuntimeError(f"{node.name} exited: {node.log.read_text()[-2000:]}")
            if not _accepts(self.port):
                time.sleep(0.5)
                continue
            out = subprocess.run(
                [sys.executable, "-c", probe, self.address],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=60,
            )
            last = out.stdout.strip() or out.stderr[-500:]
            if out.returncode == 0 and out.stdout.strip() == str(n):
                return
            time.sleep(1)
        raise RuntimeError(f"cluster did not reach {n} nodes in {timeout} s: {last}")

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.alive():
                try:
                    os.killpg(node.proc.pid, signal.SIGTERM)
                    node.proc.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
            node.kill()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def start_cluster(root: Path, second_resources: str = '{"rpi4": 1}') -> Cluster:
    root.mkdir(parents=True, exist_ok=True)
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",  # Ray 2.60's default; every process sees the same token
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a driver's address lookup answers 127.0.0.1
        "RAY_USAGE_STATS_ENABLED": "0",
        # a dead node is noticed in about 2 s instead of about 30 s
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_timeout_ms": "500",
        "RAY_health_check_failure_threshold": "3",
        "LENET_EDGE_INPUT_CACHE": str(root / "inputs"),
        # job work folders (tempfile) under this test's folder: a worker the tests kill leaves
        # its empty folder there, not in the machine's /tmp
        "TMPDIR": str(root / "tmp"),
    }
    (root / "tmp").mkdir(exist_ok=True)
    c = Cluster(root, free_port(), env)
    try:
        c.start_node("head", head=True)
        c.wait_for_nodes(1)
        c.start_node("second", head=False, resources=second_resources)
        c.wait_for_nodes(2)
    except BaseException:
        c.stop()
        raise
    return c


def pids_in_group(pgid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getpgid(int(d.name)) == pgid:
                    out.add(int(d.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


def with_descendants(pids: set[int]) -> set[int]:
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out = set(pids)
    grew = True
    while grew:
        new = {p for p, pp in parent.items() if pp in out and p not in out}
        out |= new
        grew = bool(new)
    return out


def listening_addresses(pids: set[int]) -> set[str]:
    """The local addresses of TCP sockets in LISTEN state that these processes hold."""
    inodes: dict[str, str] = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A":  # LISTEN
                continue
            inodes[f[9]] = _address(f[1].split(":")[0], v6)
    mine = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inode = target[8:-1]
                    if inode in inodes:
                        mine.add(inodes[inode])
        except OSError:
            continue
    return mine


def _address(hexaddr: str, v6: bool) -> str:
    raw = bytes.fromhex(hexaddr)
    if not v6:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def task_processes(node: Node | None = None) -> list[int]:
    """Worker processes running a lenet-edge job right now (Ray titles them ray::lenet_edge_job)."""
    pids = node.pids() if node else None
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or (pids is not None and int(d.name) not in pids):
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"ray::lenet_edge_job"):
            out.append(int(d.name))
    return out
