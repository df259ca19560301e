"""The gateway's Prometheus metrics, on a registry of its own, served on `--metrics-port` (GET /metrics).

`Metrics` is what the rest of the gateway calls; it never raises and costs a
dictionary lookup per message, so a thousand chargers metering do not feel it.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from evcharge.gateway.wire import Version

# From a fast local answer to one that waited for Kafka through a broker restart.
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.connected = Gauge(
            "evcharge_gateway_chargers_connected",
            "Chargers connected to this gateway, by OCPP version.",
            ["version"],
            registry=self.registry,
        )
        self.messages = Counter(
            "evcharge_gateway_ocpp_messages",
            "OCPP calls received from chargers, by action and version.",
            ["action", "version"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "evcharge_gateway_call_seconds",
            "From a charger's call to the gateway's result, by action.",
            ["action"],
            buckets=CALL_BUCKETS,
            registry=self.registry,
        )
        self.call_errors = Counter(
            "evcharge_gateway_call_errors",
            "CallErrors the gateway answered, by error code.",
            ["code"],
            registry=self.registry,
        )
        for version in Version:
            self.connected.labels(version.label)
        self._runner: web.AppRunner | None = None

    def message(self, action: str, version: Version) -> None:
        self.messages.labels(action, version.label).inc()

    def observe(self, action: str, seconds: float) -> None:
        self.call_seconds.labels(action).observe(seconds)

    def call_error(self, code: str) -> None:
        self.call_errors.labels(code).inc()

    def connection(self, version: Version, delta: int) -> None:
        self.connected.labels(version.label).inc(delta)

    async def serve(self, host: str, port: int) -> int:
        """Serve GET /metrics on the event loop; the port it listens on."""
        app = web.Application()
        app.router.add_get("/metrics", self._export)
        runner = self._runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        return int(runner.addresses[0][1])

    async def _export(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def close(self) -> None:
        """Idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
