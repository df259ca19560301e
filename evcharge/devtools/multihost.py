"""The whole system across hosts, and its leading central's host cut off: `make multihost-demo`.

Each host is a network namespace on one bridge (`evcharge.devtools.netns`), with an
address of its own:

    k1 k2 k3   a 3-node Kafka cluster (KRaft), one node per host
    pg         PostgreSQL, the store both centrals share
    c1 c2      two centrals: one leads (a lease in the store), the other stands by
    site       the charging points (an engine and a monitor each)
    car        the drivers

Every process binds its own host's address and reaches the others over the bridge;
a host has no route anywhere else. Cutting the leader's host makes its packets vanish
(no RST, no ICMP): the standby takes the lease once it expires, the monitors move to
it, and the drivers, who speak only Kafka, carry on. Healed, the old leader finds the
lease taken and serves as a standby.

`MultiHost` builds and removes all of it (the multi-host test uses it too);
`python -m evcharge.devtools.multihost` shows it to a person and removes everything
at the end, on Ctrl-C or a failure too.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Generic, TypeVar

from evcharge.devtools.kafka import LocalCluster, NodeSpec
from evcharge.devtools.netns import Host, Network, unavailable
from evcharge.devtools.postgres import LocalPostgres
from evcharge.devtools.system import CentralNode, ChargePoint, LocalSystem, Place
from evcharge.protocol.units import eur_text, kwh_text

__all__ = ["CENTRAL_HOSTS", "HOSTS", "KAFKA_HOSTS", "MultiHost", "Takeover", "main", "unavailable"]

KAFKA_HOSTS = ("k1", "k2", "k3")
CENTRAL_HOSTS = ("c1", "c2")
HOSTS = (*KAFKA_HOSTS, "pg", *CENTRAL_HOSTS, "site", "car")
KAFKA_PORT, CONTROLLER_PORT = 9092, 9093
PG_PORT = 5432
JOIN_TOKEN = "multihost-join"
OPERATOR_TOKEN = "multihost-operator"
LEASE_S = 2.0  # central's default
HEARTBEAT_TIMEOUT_S = 3.0  # central's default
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")

S = TypeVar("S", bound=LocalSystem)
Say = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Takeover:
    """The lead moving off a host that was cut: who led, who leads, and how long it took."""

    old: CentralNode
    new: CentralNode
    cut_at: float  # monotonic
    leads_after_s: float  # until the standby's /health said leader
    cps_back_after_s: float  # until every CP's monitor was registered with the new leader


class MultiHost(Generic[S]):
    """Hosts, Kafka, PostgreSQL and two centrals, built on enter and all removed on exit.

    The CPs and drivers are added by the caller (`add_cps`, `system.start_driver`): they
    run on `site` and `car`, every central listed for them.
    """

    def __init__(
        self,
        root: Path,
        system_class: type[S],
        *,
        max_session_s: float = 4.0,
        say: Say = _quiet,
    ) -> None:
        self.root = root
        self._system_class = system_class
        self._max_session_s = max_session_s
        self.say = say
        self._stack = contextlib.ExitStack()
        self._cut: set[str] = set()
        self._closed = False
        self.network: Network | None = None
        self.cluster: LocalCluster | None = None
        self.postgres: LocalPostgres | None = None
        self._system: S | None = None

    # ------------------------------------------------------------ build

    def __enter__(self) -> MultiHost[S]:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _build(self) -> None:
        self.network = self._stack.enter_context(Network(list(HOSTS)))
        self.say(f"{len(HOSTS)} hosts on {self.network.subnet}: {self.describe_hosts()}")

        cluster = LocalCluster(
            self.root / "kafka",
            specs=[
                NodeSpec(h.ip, KAFKA_PORT, CONTROLLER_PORT, tuple(h.prefix))
                for h in map(self.host, KAFKA_HOSTS)
            ],
        )
        self._stack.callback(cluster.stop)
        self.say("starting a 3-node Kafka cluster on k1, k2, k3…")
        cluster.start(timeout_s=180, progress=None)
        self.cluster = cluster
        self.say(f"Kafka up at {cluster.bootstrap}")

        pg = self.host("pg")
        # A folder the postgres user can reach (it runs the server when we are root).
        folder = Path(tempfile.mkdtemp(prefix="evcharge-multihost-pg-"))
        postgres = LocalPostgres(folder, PG_PORT, host=pg.ip, command_prefix=pg.prefix, trust_network=True)
        self._stack.callback(postgres.remove)
        postgres.start()
        self.postgres = postgres
        store = postgres.create_database("evcharge_multihost")
        self.say(f"PostgreSQL up at {pg.ip}:{PG_PORT}")

        system = self._system_class(
            self.root / "system",
            cluster.bootstrap,
            store=store,
            max_session_s=self._max_session_s,
            central_place=self.place("c1"),
            cp_place=self.place("site"),
            driver_place=self.place("car"),
        )
        system.central_overrides = {
            "require_auth": True,
            "insecure": True,  # a network of our own, made for this run: no TLS or Kafka credentials
            "join_token": JOIN_TOKEN,
            "operator_token": OPERATOR_TOKEN,
            "lease_s": LEASE_S,
            "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
            # No startup grace of its own: central's default is what covers a monitor that
            # must first notice its leader's host is gone before it dials the new one.
        }
        system.monitor_overrides = {"join_token": JOIN_TOKEN}
        self._stack.callback(system.stop_all)
        self._system = system
        system.start_centrals(2, places=[self.place(name) for name in CENTRAL_HOSTS])
        self.say(f"two centrals on c1 and c2 sharing the store: {self.roles()}")

    def close(self) -> None:
        """Heal every cut (so each process stops in order), then stop and remove everything."""
        if self.network is not None and not self._closed:
            self.say("stopping every process, removing the hosts…")
            for name in sorted(self._cut):
                with contextlib.suppress(Exception):
                    self.heal(name)
        self._closed = True
        self._stack.close()

    # ------------------------------------------------------------ where

    @property
    def system(self) -> S:
        assert self._system is not None, "not built yet"
        return self._system

    def host(self, name: str) -> Host:
        assert self.network is not None, "not built yet"
        return self.network.host(name)

    def place(self, name: str) -> Place:
        host = self.host(name)
        return Place(host.ip, tuple(host.prefix))

    def host_of(self, node: CentralNode) -> Host:
        assert self.network is not None
        return next(h for h in self.network.hosts if h.ip == node.address)

    def describe_hosts(self) -> str:
        assert self.network is not None
        return "  ".join(f"{h.name} {h.ip}" for h in self.network.hosts)

    # ------------------------------------------------------------ parts

    def add_cps(self, count: int) -> list[ChargePoint]:
        """`count` CPs on `site`, started together, then waited for: each ON at the leader."""
        system = self.system
        # Plain ids: this Kafka and this store serve this system alone.
        cps = [
            system.add_cp(f"CP-{n:03d}", location=f"site, bay {n}", wait=False) for n in range(1, count + 1)
        ]
        for cp in cps:
            system.wait_status(cp.cp_id, "ON", 60)
            system.wait_engine_ready(cp, 60)
        return cps

    def roles(self) -> str:
        """Each central's role as it says itself (its host cut off: not asked)."""
        parts = []
        for node in self.system.centrals:
            host = self.host_of(node)
            role = "cut off" if host.name in self._cut else (node.role() or "not answering")
            parts.append(f"{host.name} {role}")
        return ", ".join(parts)

    # ------------------------------------------------------------ faults

    def cut(self, name: str) -> float:
        """Packets to and from host `name` vanish from now; the monotonic time of the cut."""
        assert self.network is not None
        self.network.cut(self.host(name))
        self._cut.add(name)
        return time.monotonic()

    def heal(self, name: str) -> float:
        assert self.network is not None
        self.network.heal(self.host(name))
        self._cut.discard(name)
        return time.monotonic()

    def cut_leader(self) -> tuple[CentralNode, float]:
        """Cut the leading central's host off: (that central, the monotonic time of the cut)."""
        old = self.system.wait_leader(10)
        return old, self.cut(self.host_of(old).name)

    def wait_takeover(
        self, old: CentralNode, cut_at: float, timeout_s: float, on_wait: Callable[[], None] | None = None
    ) -> Takeover:
        """Until another central leads and every CP's monitor is registered with it; timed from the cut.

        `on_wait` is called about once a second meanwhile (the demo shows the state).
        """
        system = self.system
        deadline = cut_at + timeout_s
        new: CentralNode = _until(
            lambda: next((n for n in system.centrals if n is not old and n.role() == "leader"), None),
            deadline,
            "a standby to lead",
            on_wait,
        )
        leads_after = time.monotonic() - cut_at
        system.url = new.url  # the system is read through its leader from now on
        _until(lambda: self.cps_registered_with(new), deadline, "every CP back at the new leader", on_wait)
        return Takeover(old, new, cut_at, leads_after, time.monotonic() - cut_at)

    def cps_registered_with(self, node: CentralNode) -> bool:
        """Every CP's monitor registered with `node` (a leader), from the site host's address."""
        site = self.host("site").ip
        listed = {cp["cp_id"]: cp for cp in _get_json(f"{node.url}/cp")["charging_points"]}
        for cp_id in self.system.cps:
            monitor = (listed.get(cp_id) or {}).get("monitor")
            if not monitor or not str(monitor["peer"]).startswith(f"{site}:"):
                return False
        return True

    # ------------------------------------------------------------ checks

    def sockets_outside(self) -> dict[str, list[str]]:
        """Per host, each TCP socket that listens off its own address or talks to an address that
        is neither on this network nor loopback (none, when everything stays on its host)."""
        assert self.network is not None and self.network.subnet is not None
        subnet = self.network.subnet
        found: dict[str, list[str]] = {}
        for host in self.network.hosts:
            result = host.run(["ss", "-Htan"], timeout_s=10)
            if result.returncode != 0:
                raise RuntimeError(f"ss in {host.name} failed: {result.stderr.strip()}")
            wrong = []
            for line in result.stdout.splitlines():
                fields = line.split()
                if len(fields) < 5:
                    continue
                state, local, peer = fields[0], fields[3], fields[4]
                local_ip = _address(local)
                if state == "LISTEN":
                    if local_ip is None or not (
                        local_ip == ipaddress.ip_address(host.ip) or local_ip in LOOPBACK
                    ):
                        wrong.append(f"listens on {local}")
                    continue
                peer_ip = _address(peer)
                if peer_ip is None or not (peer_ip in subnet or peer_ip in LOOPBACK):
                    wrong.append(f"{state} {local} -> {peer}")
            if wrong:
                found[host.name] = wrong
        return found


def _address(endpoint: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address of an `ss` endpoint (`10.1.2.3:80`, `[::1]:80`, `*:80`); None for a wildcard."""
    host = endpoint.rsplit(":", 1)[0].strip("[]")
    host = host.split("%", 1)[0]
    if host in ("*", "0.0.0.0", "::"):
        return None
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        mapped = getattr(address, "ipv4_mapped", None)
        return mapped or address
    return None


def _until(
    predicate: Callable[[], Any], deadline: float, what: str, on_wait: Callable[[], None] | None
) -> Any:
    """`predicate()` once truthy (exceptions count as not yet), calling `on_wait` every second;
    TimeoutError naming `what` at `deadline`."""
    next_call = time.monotonic() + 1.0
    while True:
        try:
            found = predicate()
        except Exception:  # a central mid take-over, an address cut off
            found = None
        if found:
            return found
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        if on_wait is not None and now >= next_call:
            on_wait()
            next_call = now + 1.0
        time.sleep(0.02)


def _get_json(url: str, timeout_s: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.load(response)


# ------------------------------------------------------------------ the demo

DRIVER_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")


class Clock:
    """Lines for a person, each with the seconds since the demo began."""

    def __init__(self) -> None:
        self.began = time.monotonic()

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f} s] {message}", flush=True)


def driver_line(system: LocalSystem, driver_id: str, requests: int) -> str:
    """One driver's progress as it showed it: tickets so far, and what it does now."""
    events = system.events(driver_id)
    tickets = len(system.final_tickets(driver_id))
    name = driver_id.removeprefix("driver-")
    if any(e["event"] == "summary" for e in events):
        return f"{name} {tickets}/{requests} done"
    last = next(
        (e for e in reversed(events) if e["event"] in ("progress", "ticket", "accepted", "requested")), None
    )
    if last is None:
        doing = "starting"
    elif last["event"] == "progress":
        doing = f"⚡ {last['cp_id']} {kwh_text(last['wh'])} kWh"
    elif last["event"] == "requested":
        doing = "asked, waiting for central"
    elif last["event"] == "accepted":
        doing = "accepted"
    else:
        doing = "ticket"
    return f"{name} {tickets}/{requests} {doing}"


def drivers_line(system: LocalSystem, requests: dict[str, int]) -> str:
    return " | ".join(driver_line(system, d, n) for d, n in requests.items())


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m evcharge.devtools.multihost",
        description="The whole system across hosts made of network namespaces; the leading central's "
        "host cut off under load, then healed. Needs root.",
    )
    parser.add_argument("--drivers", type=int, default=3, help="drivers charging throughout (default 3)")
    parser.add_argument("--requests", type=int, default=6, help="charges each driver asks for (default 6)")
    parser.add_argument("--session", type=float, default=4.0, help="seconds each supply lasts (default 4)")
    parser.add_argument(
        "--cut-for", type=float, default=8.0, help="seconds the link stays cut after the takeover"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.drivers <= len(DRIVER_NAMES) - 1 or args.requests < 1:
        parser.error(f"--drivers is 1..{len(DRIVER_NAMES) - 1}, --requests at least 1")
    return args


def _stop_on_signals(say: Say) -> None:
    """Ctrl-C, SIGTERM and SIGHUP end the demo through every cleanup; once: a second one while
    it removes everything must not cut the removal short."""
    interrupted = False

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted:
            say("still stopping every process and removing the hosts…")
            return
        interrupted = True
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    if reason := unavailable():
        print(f"multihost demo: {reason}", file=sys.stderr)
        return 2
    root = (Path("evcharge-runs") / f"multihost-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    clock = Clock()
    _stop_on_signals(clock.say)
    world: MultiHost[LocalSystem] = MultiHost(root, LocalSystem, max_session_s=args.session, say=clock.say)
    try:
        with world:
            try:
                _show(world, args, clock)
            except KeyboardInterrupt:
                clock.say("interrupted")
                raise
            except Exception as exc:
                clock.say(f"the demo failed: {exc.__class__.__name__}: {exc}")
                raise
    except KeyboardInterrupt:
        clock.say(f"every process stopped, every namespace and link removed; logs in {root}")
        return 130
    except Exception:
        clock.say(f"every process stopped, every namespace and link removed; logs in {root}")
        return 1
    clock.say(f"every process stopped, every namespace and link removed; logs in {root}")
    return 0


def _show(world: MultiHost[LocalSystem], args: argparse.Namespace, clock: Clock) -> None:
    say = clock.say
    system = world.system
    cps = world.add_cps(args.drivers + 1)  # one more, for a driver who comes during the cut
    leader = system.wait_leader(10)
    say(f"{len(cps)} CPs on site ({world.host('site').ip}), registered with {world.host_of(leader).name}")

    requests: dict[str, int] = {}
    for name, cp in zip(DRIVER_NAMES, cps[: args.drivers], strict=False):
        driver_id = f"driver-{name}"
        system.start_driver(driver_id, [cp.cp_id] * args.requests, interval_s=0.5)
        requests[driver_id] = args.requests
    say(f"{args.drivers} drivers on car ({world.host('car').ip}), {args.requests} charges each")
    deadline = time.monotonic() + 90
    _until(
        lambda: all(any(e["event"] == "progress" for e in system.events(d)) for d in requests),
        deadline,
        "every driver charging",
        lambda: say(drivers_line(system, requests)),
    )
    for _ in range(3):
        say(f"{world.roles()} | {drivers_line(system, requests)}")
        time.sleep(1)

    old, cut_at = world.cut_leader()
    old_host = world.host_of(old).name
    say(f"✂ {old_host}'s link cut: every packet to and from {world.host(old_host).ip} vanishes")
    late_id = f"driver-{DRIVER_NAMES[args.drivers]}"
    system.start_driver(late_id, [cps[-1].cp_id], interval_s=0.5)
    requests[late_id] = 1
    say(f"{late_id.removeprefix('driver-')} asks for a charge at {cps[-1].cp_id} while no central can decide")
    takeover = world.wait_takeover(
        old, cut_at, 60, lambda: say(f"{world.roles()} | {drivers_line(system, requests)}")
    )
    new_host = world.host_of(takeover.new).name
    say(
        f"★ {new_host} leads {takeover.leads_after_s:.2f} s after the cut (lease {LEASE_S:g} s); "
        f"every CP's monitor moved to it after {takeover.cps_back_after_s:.2f} s"
    )
    _until(
        lambda: any(e["event"] == "accepted" for e in system.events(late_id)),
        time.monotonic() + 60,
        f"{late_id}'s request to be decided",
        None,
    )
    late = late_id.removeprefix("driver-")
    say(f"{late}'s request decided by {new_host} {time.monotonic() - cut_at:.2f} s after the cut")
    until = time.monotonic() + args.cut_for
    while time.monotonic() < until:
        say(f"{world.roles()} | {drivers_line(system, requests)}")
        time.sleep(1)

    healed_at = world.heal(old_host)
    say(f"{old_host}'s link healed")
    _until(
        lambda: old.role() == "standby",
        healed_at + 60,
        f"{old_host} to serve as a standby",
        lambda: say(f"{world.roles()} | {drivers_line(system, requests)}"),
    )
    rejoined_after = time.monotonic() - healed_at
    say(f"★ {old_host} is a standby again {rejoined_after:.2f} s after the heal: {world.roles()}")

    finished = time.monotonic() + 180
    next_line = 0.0
    while any(system.drivers[d].alive for d in requests):
        if time.monotonic() > finished:
            raise TimeoutError("the drivers did not finish within 180 s")
        if time.monotonic() >= next_line:
            say(drivers_line(system, requests))
            next_line = time.monotonic() + 2
        time.sleep(0.1)
    say(drivers_line(system, requests))
    _summary(world, requests, takeover, rejoined_after, say)


def _summary(
    world: MultiHost[LocalSystem],
    requests: dict[str, int],
    takeover: Takeover,
    rejoined_after: float,
    say: Say,
) -> None:
    system = world.system
    sessions = [s for s in system.sessions() if s["driver_id"] in requests]
    decided: dict[str, list[str]] = {}
    tickets = {}
    for driver_id in requests:
        for event in system.events(driver_id):
            if event["event"] in ("accepted", "denied"):
                decided.setdefault(event["request_id"], []).append(event["event"])
        tickets.update(system.final_tickets(driver_id))
    twice = sum(1 for outcomes in decided.values() if len(outcomes) > 1)
    accepted = sum(outcomes.count("accepted") for outcomes in decided.values())
    ended = sum(1 for s in sessions if s["state"] == "ended")
    wh = sum(t.wh for t in tickets.values())
    micro_eur = sum(t.micro_eur for t in tickets.values())
    old, new = world.host_of(takeover.old).name, world.host_of(takeover.new).name
    say("summary")
    for line in (
        f"requests  {sum(requests.values())} asked, {len(decided)} decided ({accepted} accepted), "
        f"{twice} decided twice",
        f"sessions  {len(sessions)}, {ended} ended; tickets {len(tickets)}: "
        f"{kwh_text(wh)} kWh, {eur_text(micro_eur)} EUR",
        f"takeover  {new} led {takeover.leads_after_s:.2f} s after {old} was cut off (lease {LEASE_S:g} s); "
        f"every CP with {new} after {takeover.cps_back_after_s:.2f} s",
        f"rejoin    {old} a standby {rejoined_after:.2f} s after the heal; {new} leads",
        f"logs      {system.logs}",
    ):
        print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
