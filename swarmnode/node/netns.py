"""Linux network namespaces for system tests: several daemons on one machine, each on its own address.

Layout of one `NetnsLab` (tag: a short random name; X: a random 10.X.0.0/23 this machine does not route):

    root namespace (this process)               <tag>-hub namespace
      <tag>r<i>  10.X.1.(4i+1)/30                 br0 ─┬─ h0
          │ observer link: RPC                         ├─ ...   one bridge port per host;
          │                                            └─ h<i>  cut(i) sets h<i> down
      rpc0       10.X.1.(4i+2)/30                        │ bridge link: peers
      eth0       10.X.0.(i+1)/24  ───────────────────────┘
    <tag>-<i> namespace (one per host, lo up)

Hosts talk to each other only through the hub bridge: `cut(i)` sets the hub end of host i's link down
and `heal(i)` sets it up again. The test process reaches each host over that host's own observer link,
so a cut host stays observable (its RPC answers while it is cut off from its peers). A host has no
route to another host's observer address, so those links never carry swarm traffic. Daemons listen on
`address(i)` and serve RPC on `rpc_address(i)`; `NetnsSwarm` starts them that way.

Everything runs `ip` as root. `netns_unavailable()` says why a machine cannot do this.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from swarmnode.node.localnet import LocalSwarm

MAX_HOSTS = 60  # observer links take 4 addresses each out of 10.X.1.0/24
IFNAMSIZ = 15  # longest Linux interface name


class NetnsError(Exception):
    """An `ip` command failed (the message names the command and carries its stderr)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


@functools.cache
def netns_unavailable() -> str | None:
    """None if this process can build a lab; otherwise what is missing (for pytest.skip)."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (euid is not 0)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"snprobe-{secrets.token_hex(3)}"
    try:
        ip("netns", "add", probe)
        ip("-n", probe, "link", "add", "br0", "type", "bridge")
        ip("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        subprocess.run(["ip", "netns", "exec", probe, "true"], check=True, capture_output=True, timeout=30)
    except (NetnsError, subprocess.SubprocessError, OSError) as exc:
        return f"`ip netns` does not work here (bridge + veth in a new namespace): {exc}"
    finally:
        ip("netns", "del", probe, check=False)
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    """IPv4 networks on routes and addresses of the root namespace, in any table."""
    out = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show", "table", "all").stdout
    nets = []
    for word in out.split():
        try:
            nets.append(ipaddress.IPv4Network(word, strict=False))
        except ValueError:
            pass
    return [n for n in nets if n.prefixlen > 0]  # default routes clash with nothing


def _pick_subnet() -> int:
    """X such that 10.X.0.0/23 overlaps nothing this machine routes (another lab's included)."""
    used = _used_networks()
    free = [x for x in range(16, 250) if not any(ipaddress.IPv4Network(f"10.{x}.0.0/23").overlaps(n) for n in used)]
    if not free:
        raise NetnsError("no free 10.X.0.0/23 for a lab: every one overlaps a route of this machine")
    return random.choice(free)


def tcp_answers(address: str, port: int, timeout: float) -> bool:
    """True if `address` accepts or refuses a TCP connection within `timeout` s: it is reachable."""
    try:
        socket.create_connection((address, port), timeout).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return True


_PROBE = ("import sys\n"
          "from socket import create_connection as connect\n"
          "try: connect((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()\n"
          "except ConnectionRefusedError: pass\n"
          "except OSError: sys.exit(1)\n")  # tcp_answers in a fresh interpreter: no imports of ours


class NetnsLab:
    """`hosts` network namespaces joined by a bridge, each also reachable from this process: a context
    manager. Building or tearing down runs `ip`; teardown is idempotent and also runs at interpreter exit."""

    def __init__(self, hosts: int, *, prefix: str | None = None) -> None:
        if not 1 <= hosts <= MAX_HOSTS:
            raise ValueError(f"a lab holds 1 to {MAX_HOSTS} hosts, not {hosts}")
        self.tag = prefix or f"sn{secrets.token_hex(3)}"
        if len(self._root_link(hosts - 1)) > IFNAMSIZ or not self.tag.replace("-", "").isalnum():
            raise ValueError(f"lab prefix {self.tag!r} is too long or not alphanumeric for interface names")
        self.hosts = hosts
        self.hub = f"{self.tag}-hub"
        self.net = 0  # X, chosen when built
        self._built = False

    # ---- names and addresses

    def namespace(self, i: int) -> str:
        return f"{self.tag}-{self._check(i)}"

    def address(self, i: int) -> str:
        """Host i's address on the bridge: where its daemon listens for peers."""
        return f"10.{self.net}.0.{self._check(i) + 1}"

    def rpc_address(self, i: int) -> str:
        """Host i's end of its observer link: where its daemon serves RPC to this process."""
        return f"10.{self.net}.1.{4 * self._check(i) + 2}"

    def exec_prefix(self, i: int) -> list[str]:
        """Prepend to a command to run it in host i's namespace (`ip netns exec` execs: same pid)."""
        return ["ip", "netns", "exec", self.namespace(i)]

    def _root_link(self, i: int) -> str:
        return f"{self.tag}r{i}"

    def _check(self, i: int) -> int:
        if not 0 <= i < self.hosts:
            raise IndexError(f"host {i} is not in this lab of {self.hosts}")
        return i

    # ---- faults

    def cut(self, i: int) -> None:
        """Cut host i off from every other host (its observer link stays up)."""
        ip("-n", self.hub, "link", "set", f"h{self._check(i)}", "down")

    def heal(self, i: int) -> None:
        ip("-n", self.hub, "link", "set", f"h{self._check(i)}", "up")

    def is_cut(self, i: int) -> bool:
        out = ip("-n", self.hub, "-o", "link", "show", f"h{self._check(i)}").stdout  # "5: h0@if2: <BROADCAST,UP> ..."
        return "UP" not in out.partition("<")[2].partition(">")[0].split(",")

    def reachable(self, i: int | None, address: str, *, port: int = 9, timeout: float = 1.0) -> bool:
        """Does a TCP SYN from host i's namespace (None: this process) to `address` get an answer (a reset
        counts)? Stands in for ping, which not every machine has; nothing need listen on `port`."""
        if i is None:
            return tcp_answers(address, port, timeout)
        cmd = [*self.exec_prefix(i), sys.executable, "-c", _PROBE, address, str(port), str(timeout)]
        return subprocess.run(cmd, capture_output=True, timeout=timeout + 30).returncode == 0

    # ---- build and teardown

    def __enter__(self) -> NetnsLab:
        try:
            self.build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def build(self) -> None:
        if self._built:
            raise NetnsError(f"lab {self.tag} is already built")
        self._built = True
        atexit.register(self.teardown)
        self.net = _pick_subnet()
        ip("netns", "add", self.hub)
        ip("-n", self.hub, "link", "set", "lo", "up")
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge", "forward_delay", "0", "stp_state", "0")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for i in range(self.hosts):
            self._build_host(i)

    def _build_host(self, i: int) -> None:
        ns, hub, root = self.namespace(i), self.hub, self._root_link(i)
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
        # bridge link, made in the hub with its peer in the host: names need only be unique per namespace
        ip("-n", hub, "link", "add", f"h{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", hub, "link", "set", f"h{i}", "master", "br0", "up")
        ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        # observer link: a /30 of its own, so neither end needs routes beyond the connected one
        ip("link", "add", root, "type", "veth", "peer", "name", "rpc0", "netns", ns)
        ip("addr", "add", f"10.{self.net}.1.{4 * i + 1}/30", "dev", root)
        ip("link", "set", root, "up")
        ip("-n", ns, "addr", "add", f"{self.rpc_address(i)}/30", "dev", "rpc0")
        ip("-n", ns, "link", "set", "rpc0", "up")

    def teardown(self) -> None:
        """Kill whatever still runs in the lab's namespaces, then delete them and the root-side links.
        Safe to call on a partly built lab and more than once."""
        if not self._built:
            return
        namespaces = [self.namespace(i) for i in range(self.hosts)] + [self.hub]
        present = set(self._listed_namespaces())
        for ns in namespaces:
            if ns in present:
                self._kill_processes(ns)
                ip("netns", "del", ns, check=False)
        for i in range(self.hosts):  # gone with their peers already, unless a host namespace never got one
            ip("link", "del", self._root_link(i), check=False)
        self._built = False
        atexit.unregister(self.teardown)

    @staticmethod
    def _kill_processes(ns: str) -> None:
        """A process inside keeps a deleted namespace alive, so nothing may outlive the lab."""
        for pid in ip("netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def _listed_namespaces(self) -> list[str]:
        return [line.split()[0] for line in ip("netns", "list").stdout.splitlines() if line.strip()]

    def leftovers(self) -> list[str]:
        """Namespaces and root-namespace links of this lab that still exist (empty after teardown)."""
        links = [line.split(":")[1].strip().split("@")[0] for line in ip("-o", "link", "show").stdout.splitlines()]
        return ([ns for ns in self._listed_namespaces() if ns.startswith(f"{self.tag}-")]
                + [name for name in links if name.startswith(f"{self.tag}r")])


class NetnsSwarm(LocalSwarm):
    """A LocalSwarm whose node i runs in lab host i: it listens on `lab.address(i)` and serves RPC on
    `lab.rpc_address(i)`, so `rpc()` keeps working while the host is cut off. Close it before the lab."""

    P2P_PORT = 4001  # every host has its own port space

    def __init__(self, lab: NetnsLab, base: Path, genesis: Path, keys_dir: Path, *,
                 extra_env: dict[str, str] | None = None, run_args: tuple[str, ...] = (),
                 init_args: tuple[str, ...] = ()) -> None:
        super().__init__(base, genesis, keys_dir, extra_env=extra_env, run_args=run_args, init_args=init_args)
        self.lab = lab

    def listen_addr(self, i: int) -> str:
        return f"/ip4/{self.lab.address(i)}/tcp/{self.P2P_PORT}"

    def rpc_host(self, i: int) -> str:
        return self.lab.rpc_address(i)

    def command_prefix(self, i: int) -> list[str]:
        return self.lab.exec_prefix(i)
