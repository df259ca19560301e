"""Unit tests for evcharge.driver.requests_file: a driver's list of CP ids."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import evcharge
from evcharge.driver.requests_file import RequestLine, parse_requests, read_requests

EXAMPLE = Path(evcharge.__file__).parent / "examples" / "requests-alice.txt"
CP_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # the CpId pattern in messages.py


def test_one_cp_per_line() -> None:
    assert parse_requests("CP-1\nCP-2\nCP-3\n") == [
        RequestLine(1, "CP-1"),
        RequestLine(2, "CP-2"),
        RequestLine(3, "CP-3"),
    ]


def test_empty_text_gives_no_requests() -> None:
    assert parse_requests("") == []
    assert parse_requests("\n\n   \n\t\n") == []
    assert parse_requests("# only a comment\n   # another\n") == []


def test_comments_and_blank_lines_are_skipped_and_line_numbers_kept() -> None:
    text = "# Alice's day\n\nCP-1\n   \n# lunch\nCP-2\n\n\nCP-3\n"
    assert parse_requests(text) == [
        RequestLine(3, "CP-1"),
        RequestLine(6, "CP-2"),
        RequestLine(9, "CP-3"),
    ]


def test_trailing_comments_are_removed() -> None:
    text = "CP-1 # the one by the door\nCP-2# no space\nCP-3 ## twice # hashes\n"
    assert parse_requests(text) == [
        RequestLine(1, "CP-1"),
        RequestLine(2, "CP-2"),
        RequestLine(3, "CP-3"),
    ]


def test_surrounding_whitespace_is_stripped() -> None:
    text = "   CP-1\n\tCP-2\t\nCP-3   \r\n  CP-4  # hi  \n"
    assert parse_requests(text) == [
        RequestLine(1, "CP-1"),
        RequestLine(2, "CP-2"),
        RequestLine(3, "CP-3"),
        RequestLine(4, "CP-4"),
    ]


def test_windows_line_endings() -> None:
    expected = [RequestLine(1, "CP-1"), RequestLine(3, "CP-2")]
    assert parse_requests("CP-1\r\n\r\nCP-2\r\n") == expected


def test_no_trailing_newline() -> None:
    assert parse_requests("CP-1\nCP-2") == [RequestLine(1, "CP-1"), RequestLine(2, "CP-2")]


def test_repeated_cp_ids_are_kept_in_order() -> None:
    assert [r.cp_id for r in parse_requests("A\nB\nA\nA\n")] == ["A", "B", "A", "A"]


def test_read_requests_reads_a_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "requests.txt"
    path.write_text("# café\nCP-1\n\nCP-2  # ñ\n", encoding="utf-8")
    assert read_requests(path) == [RequestLine(2, "CP-1"), RequestLine(4, "CP-2")]


def test_read_requests_of_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_requests(tmp_path / "nope.txt")


def test_read_requests_ignores_a_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "requests.txt"
    path.write_bytes(b"\xef\xbb\xbfCP-1\nCP-2\n")
    assert read_requests(path) == [RequestLine(1, "CP-1"), RequestLine(2, "CP-2")]


@pytest.mark.parametrize("odd", ["\f", "\v", "\x85", "\u2028"], ids=["ff", "vt", "nel", "ls"])
def test_only_newlines_end_a_line(odd: str) -> None:
    text = f"# a comment with {odd} inside\nCP-1\n"
    assert parse_requests(text) == [RequestLine(2, "CP-1")]


def test_example_requests_file_parses() -> None:
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} does not exist yet")
    requests = read_requests(EXAMPLE)
    assert len(requests) >= 10
    for request in requests:
        assert CP_ID.fullmatch(request.cp_id), request
    numbers = [r.number for r in requests]
    assert numbers == sorted(set(numbers))
