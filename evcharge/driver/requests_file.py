"""A driver's requests file: one CP id per line; blank lines and `#` comments are skipped."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RequestLine:
    number: int  # 1-based line number in the file, for messages a person can follow
    cp_id: str


def parse_requests(text: str) -> list[RequestLine]:
    lines = []
    # Only a newline ends a line: splitlines() would also split at form feeds and
    # other separators a comment may contain, and shift every line number after.
    for number, raw in enumerate(text.split("\n"), start=1):
        content = raw.split("#", 1)[0].strip()
        if content:
            lines.append(RequestLine(number, content))
    return lines


def read_requests(path: Path) -> list[RequestLine]:
    # utf-8-sig: a byte-order mark some editors write must not become part of the first CP id.
    return parse_requests(path.read_text(encoding="utf-8-sig"))
