"""What security costs central: its readings/s and request → accepted, plain and secure, in one run.

Two brokers side by side: the bench's own (PLAINTEXT) and one of the project's
secure brokers (what `evcharge kafka start --secure` runs: SASL_SSL only, a SCRAM
user per role, ACLs), with certificates from `certs.init` in the run's temp dir.
A secure system has everything on (`LocalSystem.secure`): TLS on central's monitor
port and HTTP API, SCRAM over TLS to Kafka for central, engines and drivers, every
engine event signed and verified by central, every driver enrolled and each request
carrying its proof. The simulator's monitors, engines and drivers do the same.

Each trial measures both, by the methods of the plain sections:
- readings/s: central working off a backlog alone (`LoadRunner.drain`: the
  simulator's sessions meter on while central is stopped, then central restarted
  with the machine to itself), on a fresh system each time;
- request → accepted: requests one at a time through the measuring driver
  (`latency.measure_low_load`) to a central with two idle CPs, a fresh system too.
The order alternates (plain first, then secure first), so a change in the other
work on the shared cores falls on both alike; the ratios are secure / plain.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import latency, load
from bench.loop import LoopThread
from bench.probe import Prober
from bench.stats import run_trials, summary
from bench.system import new_system
from evcharge.devtools import certs
from evcharge.devtools.kafka import LocalBroker
from evcharge.devtools.kafka.secure import BrokerSecurity
from evcharge.devtools.system import Credentials
from evcharge.protocol.signing import new_token
from evcharge.runtime.kafka_access import Kafka, KafkaAccess
from evcharge.runtime.ports import free_ports
from evcharge.runtime.tls import TlsFiles

Say = Callable[[str], None]
MODES = ("plain", "secure")


class _Mode:
    """One side of the comparison: the runner on its broker, and what its trials measured."""

    def __init__(self, name: str, runner: load.LoadRunner) -> None:
        self.name = name
        self.runner = runner
        self.accepted: list[float] = []  # every trial's samples, pooled
        self.described: dict[str, Any] = {}

    def trial(
        self, loop: LoopThread, step: load.Step, backlog_s: float, samples: int, n: int, say: Say
    ) -> dict[str, float]:
        """Its capacity run, then its requests, each on a system of its own: one central per
        broker at a time (a second on the same Kafka with another store would be refused)."""
        drained = self.runner.drain(step, backlog_s, say, None, name=f"security-drain-{self.name}-{n}")
        rate = drained.get("applied_per_s")
        if drained.get("error") or not rate:
            raise AssertionError(f"{self.name} capacity run: {drained.get('error', 'no rate')}")
        accepted = self._requests(loop, samples, n)
        cpu = drained.get("central_cpu_percent")
        say(
            f"  {self.name}: {rate:,.0f} readings/s (central {cpu} % of a core), "
            f"accepted p50 {accepted['p50'] * 1000:.0f} ms, p99 {accepted['p99'] * 1000:.0f} ms"
        )
        row = {
            f"{self.name}_readings_per_s": rate,
            f"{self.name}_accepted_p50_s": accepted["p50"],
            f"{self.name}_accepted_p99_s": accepted["p99"],
        }
        if cpu:
            # Central's CPU per reading applied: what the work costs, beside how fast it went.
            row[f"{self.name}_central_us_per_reading"] = round(cpu * 1e4 / rate, 1)
        return row

    def _requests(self, loop: LoopThread, samples: int, n: int) -> dict[str, Any]:
        """`samples` requests one at a time to a central with two idle CPs."""
        credentials = self.runner.credentials
        system = new_system(
            self.runner.root, self.runner.kafka, f"security-{self.name}-{n}", credentials=credentials
        )
        prober: Prober | None = None
        try:
            system.start_central()
            # What it runs with, as central itself and the links say: the figures' context.
            self.described = {
                "central_api": system.url.split(":", 1)[0],
                "operator_auth": system.view.health()["auth"],
                "kafka": "SASL_SSL (SCRAM-SHA-512)" if credentials is not None else "PLAINTEXT",
                "proofs_required": system.central_settings().proofs_required,
            }
            cps = [system.ident(f"SEC-{self.name.upper()}-{k}") for k in (1, 2)]
            for cp_id in cps:
                system.add_cp(cp_id)
            driver = system.ident(f"security-{self.name}-probe")
            token = system.enrol_driver(driver) if credentials is not None else None
            prober = Prober(_driver_access(self.runner.kafka, credentials), driver, token=token)
            loop.run(prober.start(), 60)
            low = latency.measure_low_load(loop, prober, cps, samples, 0)
        finally:
            try:
                if prober is not None:
                    loop.run(prober.close(), 30)
            finally:
                system.stop_all()
        accepted: dict[str, Any] = low["accepted_s"]
        if not accepted.get("count"):
            raise AssertionError(f"{self.name}: no request accepted ({', '.join(low['denied'][:3])})")
        self.accepted += accepted["samples"]
        return accepted


def measure(
    loop: LoopThread,
    root: Path,
    plain: load.LoadRunner,
    step: load.Step,
    backlog_s: float,
    samples: int,
    trials: int,
    say: Say,
) -> dict[str, Any]:
    """`trials` pairs of runs, plain and secure; `plain` is the runner on the bench's own broker."""
    tls = root / "security-tls"
    certs.init(tls)
    security = BrokerSecurity(tls)
    port, controller_port = free_ports(2)
    broker = LocalBroker(
        data_dir=root / "kafka-secure",
        port=port,
        controller_port=controller_port,
        die_with_parent=True,
        security=security,
    )
    secure: load.LoadRunner | None = None
    try:
        started = broker.start(timeout_s=180, progress=say)
        credentials = Credentials(new_token(), new_token(), tls_dir=tls, kafka_users=security.users)
        secure = load.LoadRunner(root, broker.bootstrap, loop, broker.status().pid, credentials)
        modes = [_Mode("plain", plain), _Mode("secure", secure)]
        say(
            f"each trial: {step.drivers} sessions metering every {step.meter_interval_s:g} s while "
            f"central is stopped {backlog_s:g} s; then {samples} requests one at a time to a central "
            "with two CPs; plain and secure"
        )
        count = 0

        def trial() -> dict[str, float]:
            nonlocal count
            count += 1
            order = modes if count % 2 else modes[::-1]
            row: dict[str, float] = {}
            for mode in order:
                row.update(mode.trial(loop, step, backlog_s, samples, count, say))
            row["readings_ratio"] = round(row["secure_readings_per_s"] / row["plain_readings_per_s"], 3)
            return row

        out = run_trials(trials, say, "plain and secure", trial)
        out.update(
            {
                "secure_broker_start_s": started.start_s,
                "drain": [step.drivers, step.meter_interval_s, backlog_s],
                "accepted_samples_per_trial": samples,
                "modes": {m.name: m.described for m in modes},
                **{f"{m.name}_accepted_s": summary(m.accepted) for m in modes},
            }
        )
        out["ratio"] = _ratios(out)
        return out
    finally:
        if secure is not None:
            secure.close()
        broker.stop()


def _ratios(out: dict[str, Any]) -> dict[str, float | None]:
    """Secure / plain: readings/s as the median of each trial's pair, latency of the pooled samples."""
    paired = [row["readings_ratio"] for row in out["trials"] if "readings_ratio" in row]

    def ratio(key: str) -> float | None:
        secure, plain = out["secure_accepted_s"].get(key), out["plain_accepted_s"].get(key)
        return round(secure / plain, 2) if secure and plain else None

    return {
        "readings_per_s": round(statistics.median(paired), 3) if paired else None,
        "accepted_p50": ratio("p50"),
        "accepted_p99": ratio("p99"),
    }


def _driver_access(kafka: str, credentials: Credentials | None) -> Kafka:
    """The measuring driver reaches Kafka as the driver role does (its SCRAM user, over TLS)."""
    if credentials is None or credentials.kafka_users is None:
        return kafka
    return KafkaAccess(
        kafka, "driver", credentials.kafka_users.password("driver"), TlsFiles(ca=credentials.ca)
    )
