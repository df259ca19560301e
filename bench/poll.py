"""`python -m bench.poll URL CLIENTS SECONDS`: that many dashboards polling URL back to back.

A process of its own, so its CPU is not the bench's and is metered apart. Each
client keeps one connection alive and asks again as soon as it has the whole
answer (read, never parsed: a dashboard's own work is not central's). Prints one
JSON line: answers, errors, latency percentiles, bytes, and this process's CPU.
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import aiohttp

from bench.stats import summary


async def main(url: str, clients: int, seconds: float) -> dict[str, object]:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    size = 0
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal size
        while time.monotonic() < deadline:
            sent = time.monotonic()
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    if response.status != 200:
                        errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                        continue
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await asyncio.sleep(0.05)
                continue
            latencies.append(time.monotonic() - sent)
            size = len(body)

    started = time.monotonic()
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    elapsed = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "answers": len(latencies),
        "answers_per_s": round(len(latencies) / elapsed, 1),
        # Thousands of answers: the percentiles, not every sample.
        "latency_s": {k: v for k, v in summary(latencies).items() if k != "samples"},
        "errors": errors,
        "body_bytes": size,
        "poller_cpu_percent": round(100 * (usage.ru_utime + usage.ru_stime) / elapsed, 1),
    }


if __name__ == "__main__":
    url, clients, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    print(json.dumps(asyncio.run(main(url, clients, seconds))))
