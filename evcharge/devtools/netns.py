"""Network namespaces for partition tests and the multi-host demo: hosts on one bridge, links cut
and healed.

A `Network` is a hub namespace holding a Linux bridge, one namespace per host with a
veth into the bridge and an address 10.A.B.x/24 (A.B random per network), and one veth
from the root namespace, the observer link, so the process that built it reaches every host's
address without entering a namespace. Neighbour entries are static, so a cut makes
packets vanish: no ARP failure, no RST, no ICMP. Everything is named `evt-<tag>…` and
removed on exit; what a crashed run left behind is removed by the next one. Needs root
and iproute2's `ip`.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import ipaddress
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

PREFIX = "evt-"
# One lock file per live network: held (flock) for its whole life, released by the
# kernel when its process dies however it dies, so a free lock means leftovers.
LOCK_DIR = Path(tempfile.gettempdir()) / "evcharge-netns"
NETNS_DIR = Path("/var/run/netns")  # where `ip netns add` mounts each namespace
_CLONE_NEWNET = 0x40000000
_TAG_LEN = 6

_T = TypeVar("_T")


class NetnsError(Exception):
    """An `ip` command failed; carries its command line and what it said."""


def _run(
    argv: Sequence[str], *, timeout_s: float = 10, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"{' '.join(argv)} did not finish within {timeout_s} s") from exc
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@functools.cache
def unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    name = f"{PREFIX}probe-{os.getpid()}"
    try:
        _run(["ip", "netns", "add", name])
    except NetnsError as exc:
        return f"cannot create a network namespace: {exc}"
    _run(["ip", "netns", "del", name], check=False)
    return None


def _in_netns(netns: str, make: Callable[[], _T]) -> _T:
    """`make()` run on a fresh thread that has entered `netns`; sockets it makes stay there.

    Only that short-lived thread switches namespace: the rest of the process, and every
    later use of the socket from any thread, is unaffected.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with (NETNS_DIR / netns).open() as handle:
                setns = getattr(os, "setns", None)  # Python 3.12+
                if setns is not None:
                    setns(handle.fileno(), _CLONE_NEWNET)
                else:
                    libc = ctypes.CDLL(None, use_errno=True)
                    if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                        errno = ctypes.get_errno()
                        raise OSError(errno, f"setns({netns}): {os.strerror(errno)}")
            box["value"] = make()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"enter-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: _T = box["value"]
    return value


@dataclass(frozen=True)
class Endpoint:
    """One interface on the bridge: a host's, or the observer link in the root namespace."""

    name: str
    ip: str
    mac: str
    netns: str | None  # None: the root namespace
    dev: str  # its interface in `netns`
    hub_port: str  # the other end of its veth, a port of the hub's bridge

    def _ip(self, *args: str) -> list[str]:
        return ["ip", "-n", self.netns, *args] if self.netns else ["ip", *args]


@dataclass(frozen=True)
class Host(Endpoint):
    """A namespace with one address on the network; runs processes and makes sockets there."""

    _network: Network | None = field(default=None, compare=False, repr=False)

    @property
    def prefix(self) -> list[str]:
        """Prepend to an argv to run it in this host (LocalBroker's `command_prefix`, Child's `prefix`)."""
        assert self.netns is not None
        return ["ip", "netns", "exec", self.netns]

    def popen(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        **kwargs: Any,
    ) -> subprocess.Popen[Any]:
        """Start `argv` inside this host. `ip netns exec` execs it, so the pid is the program's.

        The network owns the process: one still running when the network closes is stopped.
        """
        proc = subprocess.Popen(
            [*self.prefix, *argv],
            env=dict(env) if env is not None else None,
            stdout=stdout,
            stderr=stderr,
            **kwargs,
        )
        if self._network is not None:
            self._network._processes.append(proc)
        return proc

    def run(
        self, argv: Sequence[str], timeout_s: float = 30, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=timeout_s, check=False, **kwargs
        )

    def socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket that lives in this host's namespace, for use from this process itself.

        The network owns it: closed when the network closes (an open socket would keep the
        namespace's network stack alive after its name is gone).
        """
        assert self.netns is not None
        sock = _in_netns(self.netns, lambda: socket.socket(family, kind))
        if self._network is not None:
            self._network._sockets.append(sock)
        return sock


def _names(prefix: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Namespaces and root links that look like ours, by tag: ({tag: [netns]}, {tag: link})."""
    pattern = re.compile(rf"^{re.escape(prefix)}([0-9a-f]{{{_TAG_LEN}}})(?:-|$)")
    spaces: dict[str, list[str]] = {}
    for line in _run(["ip", "netns", "list"]).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if match := pattern.match(name):
            spaces.setdefault(match.group(1), []).append(name)
    links: dict[str, str] = {}
    for link in json.loads(_run(["ip", "-j", "link", "show"]).stdout or "[]"):
        if (match := pattern.match(link["ifname"])) and link["ifname"] == prefix + match.group(1):
            links[match.group(1)] = link["ifname"]
    return spaces, links


def _lock_free(tag: str) -> bool:
    path = LOCK_DIR / f"{tag}.lock"
    try:
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _kill_everything_in(netns: str, timeout_s: float = 10) -> None:
    """SIGKILL whatever still runs in `netns`: a process there keeps the namespace alive."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = _run(["ip", "netns", "pids", netns], check=False)
        pids = [int(p) for p in out.stdout.split()] if out.returncode == 0 else []
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise NetnsError(f"processes {pids} in {netns} did not die")
        time.sleep(0.05)


def _remove(spaces: Sequence[str], link: str | None) -> None:
    for netns in spaces:
        _kill_everything_in(netns)
    if link is not None:
        _run(["ip", "link", "del", link], check=False)
    for netns in spaces:
        _run(["ip", "netns", "del", netns], check=False)


def remove_stale(prefix: str = PREFIX) -> list[str]:
    """Remove the namespaces and links of networks whose process is gone; their tags.

    A network whose owner still runs (its lock is held) is left alone, so parallel runs
    do not tear each other down.
    """
    spaces, links = _names(prefix)
    removed = []
    for tag in sorted(set(spaces) | set(links)):
        if _lock_free(tag):
            _remove(spaces.get(tag, []), links.get(tag))
            (LOCK_DIR / f"{tag}.lock").unlink(missing_ok=True)
            removed.append(tag)
    return removed


def _pick_subnet() -> ipaddress.IPv4Network:
    """A random 10.A.B.0/24 that nothing in the root namespace routes or uses yet."""
    taken = []
    for route in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_network(dst, strict=False))
    for _ in range(200):
        subnet = ipaddress.IPv4Network(f"10.{random.randint(64, 250)}.{random.randint(0, 255)}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise NetnsError("no free 10.x.y.0/24 subnet found")


class Network:
    """Hosts (namespaces) on one bridge, reachable from the root namespace; a context manager.

    `hosts` is a count (hosts named h1, h2, …) or a list of short names.
    """

    def __init__(self, hosts: int | Sequence[str] = 2, *, prefix: str = PREFIX) -> None:
        names = [f"h{i}" for i in range(1, hosts + 1)] if isinstance(hosts, int) else list(hosts)
        if not 1 <= len(names) <= 200 or len(set(names)) != len(names):
            raise ValueError(f"between 1 and 200 distinct host names, got {names}")
        for name in names:
            if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,19}", name) or name == "hub":
                raise ValueError(f"a host name is up to 20 of [a-z0-9-] and not 'hub': {name!r}")
        if len(prefix) + _TAG_LEN > 15:
            raise ValueError("the prefix must leave room for the tag in a 15-character interface name")
        self.prefix = prefix
        self.tag = secrets.token_hex(_TAG_LEN // 2)
        self.hub = f"{prefix}{self.tag}-hub"
        self.root_link = f"{prefix}{self.tag}"
        self._names = names
        self.hosts: list[Host] = []
        self.observer: Endpoint | None = None
        self.subnet: ipaddress.IPv4Network | None = None
        self._processes: list[subprocess.Popen[Any]] = []
        self._sockets: list[socket.socket] = []
        self._lock: IO[str] | None = None
        self._created: list[str] = []  # namespaces, in creation order

    def __enter__(self) -> Network:
        if reason := unavailable():
            raise NetnsError(reason)
        remove_stale(self.prefix)
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = (LOCK_DIR / f"{self.tag}.lock").open("a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    @property
    def endpoints(self) -> list[Endpoint]:
        assert self.observer is not None
        return [*self.hosts, self.observer]

    def _mac(self, index: int, salt: int = 0) -> str:
        assert self.subnet is not None
        a, b = self.subnet.network_address.packed[1:3]
        # Locally administered, unique per subnet (and so per live network).
        return f"02:e7:{a:02x}:{b:02x}:{salt:02x}:{index:02x}"

    def _build(self) -> None:
        self.subnet = _pick_subnet()
        base = self.subnet.network_address
        self._add_netns(self.hub)
        hub = ["ip", "-n", self.hub]
        _run([*hub, "link", "add", "br0", "type", "bridge"])
        _run([*hub, "link", "set", "br0", "up"])
        for index, name in enumerate(self._names, start=1):
            netns = f"{self.prefix}{self.tag}-{name}"
            self._add_netns(netns)
            host = Host(name, str(base + index), self._mac(index), netns, "eth0", f"p{index}", _network=self)
            _run([*hub, "link", "add", host.hub_port, "type", "veth", "peer", "name", "eth0", "netns", netns])
            _run([*hub, "link", "set", host.hub_port, "master", "br0", "up"])
            _run(host._ip("link", "set", "lo", "up"))
            _run(host._ip("link", "set", "eth0", "address", host.mac))
            _run(host._ip("addr", "add", f"{host.ip}/24", "dev", "eth0"))
            _run(host._ip("link", "set", "eth0", "up"))
            self.hosts.append(host)
        observer = Endpoint("observer", str(base + 254), self._mac(254), None, self.root_link, "obs")
        _run(["ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "obs", "netns", self.hub])
        _run([*hub, "link", "set", "obs", "master", "br0", "up"])
        _run(["ip", "link", "set", self.root_link, "address", observer.mac])
        _run(["ip", "addr", "add", f"{observer.ip}/24", "dev", self.root_link])
        _run(["ip", "link", "set", self.root_link, "up"])
        self.observer = observer
        for a in self.endpoints:
            for b in self.endpoints:
                if a is not b:
                    self._set_neighbour(a, b, b.mac)

    def _add_netns(self, netns: str) -> None:
        _run(["ip", "netns", "add", netns])
        self._created.append(netns)

    @staticmethod
    def _set_neighbour(at: Endpoint, to: Endpoint, mac: str) -> None:
        _run(at._ip("neigh", "replace", to.ip, "lladdr", mac, "dev", at.dev, "nud", "permanent"))

    def cut(self, endpoint: Endpoint) -> None:
        """Detach `endpoint`'s link from the bridge: its packets, both ways, vanish.

        Its own interface stays up, so its kernel sees no error either: a connect times
        out, an established connection stays open and retransmits until healed.
        """
        _run(["ip", "-n", self.hub, "link", "set", endpoint.hub_port, "nomaster"])

    def heal(self, endpoint: Endpoint) -> None:
        _run(["ip", "-n", self.hub, "link", "set", endpoint.hub_port, "master", "br0"])

    def cut_between(self, a: Endpoint, b: Endpoint) -> None:
        """Packets between `a` and `b` alone vanish; both still reach everyone else.

        Each side's static neighbour entry for the other points at a MAC no interface
        has: the bridge floods those frames and every interface drops them as not its own.
        (No tc or nftables needed: this kernel has neither tc actions nor nft.)
        """
        self._set_neighbour(a, b, self._mac(self.endpoints.index(b) + 1, salt=0xFF))
        self._set_neighbour(b, a, self._mac(self.endpoints.index(a) + 1, salt=0xFF))

    def heal_between(self, a: Endpoint, b: Endpoint) -> None:
        self._set_neighbour(a, b, b.mac)
        self._set_neighbour(b, a, a.mac)

    def close(self) -> None:
        """Stop what runs in the hosts, remove every namespace and link. Idempotent."""
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._processes.clear()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        # Hosts first and the hub last: the bridge's ports go with the hub.
        _remove(list(reversed(self._created)), self.root_link)
        self._created.clear()
        if self._lock is not None:
            (LOCK_DIR / f"{self.tag}.lock").unlink(missing_ok=True)
            self._lock.close()  # releases the flock
            self._lock = None

    def leftovers(self) -> list[str]:
        """This network's namespaces and root link that still exist (none after close)."""
        spaces, links = _names(self.prefix)
        return [*spaces.get(self.tag, []), *([links[self.tag]] if self.tag in links else [])]
