"""Unit tests for evcharge.runtime.framing: the sans-IO TCP frame encoder and decoder."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evcharge.errors import FrameTooLarge, ProtocolError
from evcharge.protocol.framing import (
    DEFAULT_MAX_FRAME_BYTES,
    HEADER,
    MAGIC,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_frame,
)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (any order, duplicates and out-of-range allowed)."""
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    chunks, start = [], 0
    for point in [*points, len(data)]:
        chunks.append(data[start:point])
        start = point
    return chunks


def feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


# ------------------------------------------------------------ encoding ----


def test_header_layout() -> None:
    frame = encode_frame(b"hello")
    assert HEADER.size == 7
    assert frame[:2] == MAGIC == b"EV"
    assert frame[2] == PROTOCOL_VERSION == 1
    assert struct.unpack(">I", frame[3:7]) == (5,)
    assert frame[7:] == b"hello"


def test_empty_payload_is_a_valid_frame() -> None:
    frame = encode_frame(b"")
    assert len(frame) == HEADER.size
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [b""]
    assert decoder.pending_bytes == 0


def test_encode_accepts_a_payload_exactly_at_the_limit() -> None:
    payload = b"x" * DEFAULT_MAX_FRAME_BYTES
    assert FrameDecoder().feed(encode_frame(payload)) == [payload]


def test_encode_refuses_a_payload_over_the_default_limit() -> None:
    with pytest.raises(FrameTooLarge) as info:
        encode_frame(b"x" * (DEFAULT_MAX_FRAME_BYTES + 1))
    assert info.value.size == DEFAULT_MAX_FRAME_BYTES + 1
    assert info.value.limit == DEFAULT_MAX_FRAME_BYTES


def test_encode_refuses_a_payload_over_a_custom_limit() -> None:
    assert encode_frame(b"abcd", max_frame_bytes=4)
    with pytest.raises(FrameTooLarge):
        encode_frame(b"abcde", max_frame_bytes=4)


def test_frame_too_large_is_a_protocol_error() -> None:
    assert issubclass(FrameTooLarge, ProtocolError)


# ------------------------------------------------------------ decoding ----

PAYLOADS = [b"", b"a", b'{"type":"heartbeat","cp_id":"CP-1","health":"OK"}', bytes(range(256))]


@pytest.mark.parametrize("payload", PAYLOADS, ids=["empty", "one", "json", "binary"])
def test_round_trip_whole(payload: bytes) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(payload)) == [payload]
    assert decoder.pending_bytes == 0


@pytest.mark.parametrize("payload", PAYLOADS, ids=["empty", "one", "json", "binary"])
def test_round_trip_byte_by_byte(payload: bytes) -> None:
    frame = encode_frame(payload)
    decoder = FrameDecoder()
    out: list[bytes] = []
    for i in range(len(frame)):
        got = decoder.feed(frame[i : i + 1])
        if i < len(frame) - 1:
            assert got == []
            assert decoder.pending_bytes == i + 1
        out.extend(got)
    assert out == [payload]
    assert decoder.pending_bytes == 0


def test_round_trip_split_at_every_point() -> None:
    payload = b'{"type":"ack","corr":7}'
    frame = encode_frame(payload)
    for cut in range(len(frame) + 1):
        decoder = FrameDecoder()
        first = decoder.feed(frame[:cut])
        assert first == ([payload] if cut == len(frame) else [])
        assert decoder.pending_bytes == (0 if cut == len(frame) else cut)
        second = decoder.feed(frame[cut:])
        assert first + second == [payload], cut
        assert decoder.pending_bytes == 0


def test_two_frames_split_at_every_pair_of_points() -> None:
    payloads = [b"one", b"second"]
    stream = b"".join(encode_frame(p) for p in payloads)
    for a in range(len(stream) + 1):
        for b in range(a, len(stream) + 1):
            decoder = FrameDecoder()
            chunks = [stream[:a], stream[a:b], stream[b:]]
            assert feed_all(decoder, chunks) == payloads, (a, b)
            assert decoder.pending_bytes == 0


def test_several_frames_in_one_chunk() -> None:
    payloads = [b"a", b"", b"ccc", b"dddd" * 100]
    decoder = FrameDecoder()
    assert decoder.feed(b"".join(encode_frame(p) for p in payloads)) == payloads
    assert decoder.pending_bytes == 0


def test_complete_frames_and_the_start_of_the_next_in_one_chunk() -> None:
    decoder = FrameDecoder()
    third = encode_frame(b"third")
    chunk = encode_frame(b"first") + encode_frame(b"second") + third[:4]
    assert decoder.feed(chunk) == [b"first", b"second"]
    assert decoder.pending_bytes == 4
    assert decoder.feed(third[4:]) == [b"third"]
    assert decoder.pending_bytes == 0


def test_empty_feed_returns_nothing() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.pending_bytes == 0


def test_pending_bytes_for_a_frame_cut_in_the_payload() -> None:
    frame = encode_frame(b"0123456789")
    decoder = FrameDecoder()
    assert decoder.feed(frame[:-3]) == []
    assert decoder.pending_bytes == len(frame) - 3


def test_pending_bytes_for_a_frame_cut_in_the_header() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(b"xyz")[:5]) == []
    assert decoder.pending_bytes == 5


def test_oversized_header_is_refused_before_the_payload_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=16)
    header = HEADER.pack(MAGIC, PROTOCOL_VERSION, 17)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(header)  # not one payload byte sent
    assert info.value.size == 17
    assert info.value.limit == 16


def test_huge_announced_length_is_refused_at_the_header() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(HEADER.pack(MAGIC, PROTOCOL_VERSION, 0xFFFFFFFF))


def test_length_exactly_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(max_frame_bytes=16)
    assert decoder.feed(HEADER.pack(MAGIC, PROTOCOL_VERSION, 16)) == []
    assert decoder.feed(b"y" * 16) == [b"y" * 16]


def test_oversized_second_frame_after_a_good_one() -> None:
    decoder = FrameDecoder(max_frame_bytes=8)
    good = encode_frame(b"ok", max_frame_bytes=8)
    with pytest.raises(FrameTooLarge):
        decoder.feed(good + HEADER.pack(MAGIC, PROTOCOL_VERSION, 9))


@pytest.mark.parametrize(
    "stray",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00", b"SSH-2.0-OpenSSH_9.6\r\n"],
    ids=["http", "tls", "ssh"],
)
def test_wrong_magic_is_a_protocol_error(stray: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        FrameDecoder().feed(stray)
    assert not isinstance(info.value, FrameTooLarge)


def test_wrong_magic_fails_at_the_first_three_bytes() -> None:
    # A stray client is rejected before a full header could be read as a length.
    with pytest.raises(ProtocolError, match="not an evcharge frame"):
        FrameDecoder().feed(b"GET")


def test_wrong_magic_on_the_second_frame() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match="not an evcharge frame"):
        decoder.feed(encode_frame(b"fine") + b"XX\x01\x00\x00\x00\x00")


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_protocol_version_is_a_protocol_error(version: int) -> None:
    data = HEADER.pack(MAGIC, version, 3) + b"abc"
    with pytest.raises(ProtocolError, match=f"protocol version {version}"):
        FrameDecoder().feed(data)


def test_wrong_protocol_version_fails_at_the_third_byte() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(MAGIC) == []
    with pytest.raises(ProtocolError, match="protocol version 2"):
        decoder.feed(b"\x02")


# ----------------------------------------------------------- properties ----

# Mostly garbage, but often starting like a real frame so the length and version checks run too.
prefixes = st.one_of(
    st.just(b""),
    st.builds(lambda n: HEADER.pack(MAGIC, PROTOCOL_VERSION, n), st.integers(0, 2**32 - 1)),
    st.builds(lambda v: MAGIC + bytes([v]), st.integers(0, 255)),
)
noise = st.builds(lambda head, tail: head + tail, prefixes, st.binary(max_size=120))


@settings(max_examples=500, database=None, deadline=None)
@given(
    data=st.lists(noise, min_size=1, max_size=3).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=12),
    limit=st.integers(min_value=0, max_value=128),
)
def test_arbitrary_bytes_in_arbitrary_chunks_raise_only_protocol_error(
    data: bytes, cuts: list[int], limit: int
) -> None:
    decoder = FrameDecoder(max_frame_bytes=limit)
    for chunk in split_at(data, cuts):
        try:
            frames = decoder.feed(chunk)
        except ProtocolError:
            return
        for frame in frames:
            assert isinstance(frame, bytes)
            assert len(frame) <= limit
        assert decoder.pending_bytes >= 0


LIMIT = 40


@settings(max_examples=500, database=None, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=LIMIT), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=8 * (LIMIT + 7)), max_size=16),
)
def test_any_payloads_concatenated_and_resplit_decode_to_the_same_list(
    payloads: list[bytes], cuts: list[int]
) -> None:
    stream = b"".join(encode_frame(p, max_frame_bytes=LIMIT) for p in payloads)
    decoder = FrameDecoder(max_frame_bytes=LIMIT)
    assert feed_all(decoder, split_at(stream, cuts)) == payloads
    assert decoder.pending_bytes == 0


@settings(max_examples=100, database=None, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=0, max_size=LIMIT), min_size=1, max_size=6),
    keep=st.integers(min_value=1),
)
def test_a_truncated_stream_leaves_pending_bytes(payloads: list[bytes], keep: int) -> None:
    stream = b"".join(encode_frame(p, max_frame_bytes=LIMIT) for p in payloads)
    cut = keep % len(stream)  # strictly inside the stream: the last frame is never complete
    boundaries, end = [0], 0
    for p in payloads:
        end += HEADER.size + len(p)
        boundaries.append(end)
    decoder = FrameDecoder(max_frame_bytes=LIMIT)
    decoded = decoder.feed(stream[:cut])
    assert decoded == payloads[: len(decoded)]
    assert len(decoded) < len(payloads)
    assert boundaries[len(decoded)] <= cut
    assert decoder.pending_bytes == cut - boundaries[len(decoded)]
    assert (decoder.pending_bytes == 0) == (cut in boundaries)
