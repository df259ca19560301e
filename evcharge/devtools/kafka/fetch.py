"""Apache Kafka's jars from Maven Central, fetched once per machine into a cache dir.

Java and Maven are checked first, each with one line saying what to install.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from evcharge.errors import BrokerError

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
# kafka_2.13 brings slf4j-api 1.7, which does not bind to log4j2: without slf4j-api 2 and
# the slf4j2 bridge the broker would log nothing at all.
MAVEN_ARTIFACTS: tuple[tuple[str, str, str], ...] = (
    ("org.apache.kafka", f"kafka_{SCALA_VERSION}", KAFKA_VERSION),
    ("org.apache.logging.log4j", "log4j-core", "2.25.3"),
    ("org.apache.logging.log4j", "log4j-slf4j2-impl", "2.25.3"),
    ("org.slf4j", "slf4j-api", "2.0.17"),
)
MIN_JAVA = 17

JAVA_MISSING = (
    f"Java {MIN_JAVA} or newer is needed to run Kafka: "
    f"install it (Debian: apt-get install openjdk-{MIN_JAVA}-jre-headless)"
)
MAVEN_MISSING = (
    "Maven is needed to fetch Kafka from Maven Central: install it (Debian: apt-get install maven)"
)

_COMPLETE_MARKER = ".complete"

Progress = Callable[[str], None]


def cache_dir() -> Path:
    """Where fetched jars are kept: `$EVCHARGE_CACHE_DIR` or `~/.cache/evcharge`."""
    env = os.environ.get("EVCHARGE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "evcharge"


def kafka_home(cache: Path | None = None) -> Path:
    return (cache if cache is not None else cache_dir()) / f"kafka-{KAFKA_VERSION}"


def say(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise BrokerError(JAVA_MISSING)
    major = _java_major_version(java)
    if major is not None and major < MIN_JAVA:
        raise BrokerError(f"{JAVA_MISSING} (found Java {major} at {java})")
    return java


def _java_major_version(java: str) -> int | None:
    """Major version from `java -version`, or None when it cannot be told (then just try)."""
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"cannot run {java}: {exc}") from exc
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older call themselves "1.8.0_…".
    return int(match.group(2) or 0) if major == 1 else major


def _require_maven() -> str:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(MAVEN_MISSING)
    return mvn


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock, so two processes never fetch or start the same thing at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_libs(home: Path) -> Path | None:
    marker = home / _COMPLETE_MARKER
    libs = home / "libs"
    if not marker.is_file():
        return None
    names = marker.read_text().split()
    # A marker whose jars were deleted by hand is as good as no marker.
    if not names or not all((libs / name).is_file() for name in names):
        return None
    return libs


def _pom_xml() -> str:
    deps = "\n".join(
        f"    <dependency><groupId>{g}</groupId><artifactId>{a}</artifactId>"
        f"<version>{v}</version></dependency>"
        for g, a, v in MAVEN_ARTIFACTS
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>evcharge</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


def fetch_kafka(cache: Path | None = None, progress: Progress | None = None) -> Path:
    """Make sure the Kafka jars are in the cache and return their folder. Idempotent.

    The jars are fetched into a temp folder next to the final one and renamed into place
    only after Maven succeeded and the marker is written, so an interrupted fetch is never
    mistaken for a complete one.
    """
    home = kafka_home(cache)
    libs = cached_libs(home)
    if libs is not None:
        return libs
    # Maven runs on the JVM, so a missing java is the first thing to report.
    require_java()
    mvn = _require_maven()
    with file_lock(home.parent / f"kafka-{KAFKA_VERSION}.lock"):
        libs = cached_libs(home)
        if libs is not None:  # someone else fetched while we waited for the lock
            return libs
        say(progress, f"Fetching Apache Kafka {KAFKA_VERSION} from Maven Central (first run only)…")
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f"kafka-{KAFKA_VERSION}.tmp-", dir=home.parent))
        try:
            (tmp / "pom.xml").write_text(_pom_xml())
            cmd = [
                mvn, "-B", "-q", "dependency:copy-dependencies",
                "-DoutputDirectory=libs", "-DincludeScope=runtime",
            ]  # fmt: skip
            try:
                result = subprocess.run(
                    cmd, cwd=tmp, capture_output=True, text=True, timeout=900, check=False
                )
            except subprocess.TimeoutExpired as exc:
                raise BrokerError("Maven did not finish fetching Kafka within 15 minutes") from exc
            jars = sorted(p.name for p in (tmp / "libs").glob("*.jar"))
            if result.returncode != 0 or not jars:
                tail = last_lines(result.stdout + result.stderr, 25)
                raise BrokerError(
                    f"Maven could not fetch Kafka {KAFKA_VERSION} (exit code {result.returncode}):\n{tail}"
                )
            (tmp / _COMPLETE_MARKER).write_text("\n".join(jars) + "\n")
            (tmp / "pom.xml").unlink()
            if home.exists():  # a stale incomplete folder (no marker or missing jars)
                shutil.rmtree(home)
            # mkdtemp makes folders private (0700); the cache gets ordinary permissions.
            tmp.chmod(0o755)
            tmp.rename(home)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        say(progress, f"Fetched {len(jars)} jars in {time.monotonic() - started:.1f} s")
    return home / "libs"


def last_lines(text: str, n: int) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-n:]) if lines else "(no output)"
