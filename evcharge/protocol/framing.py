"""The TCP frame: 2 magic bytes, 1 protocol-version byte, a 4-byte big-endian length, the payload.

Sans-IO: `FrameDecoder.feed()` takes whatever bytes arrived and returns the
complete payloads; it raises only `ProtocolError`. The magic bytes make a
stray client (an HTTP request, a port scanner) fail at its first bytes instead
of being read as a huge length.
"""

from __future__ import annotations

import struct

from evcharge.errors import FrameTooLarge, ProtocolError

MAGIC = b"EV"
PROTOCOL_VERSION = 1
HEADER = struct.Struct(">2sBI")
DEFAULT_MAX_FRAME_BYTES = 64 * 1024


def encode_frame(payload: bytes, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    if len(payload) > max_frame_bytes:
        raise FrameTooLarge(len(payload), max_frame_bytes)
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, len(payload)) + payload


class FrameDecoder:
    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished frame: non-zero at EOF means the peer cut a frame short."""
        return len(self._buffer)

    def take_pending(self) -> bytes:
        """The bytes of the unfinished frame, handed to whoever reads the stream from here on."""
        pending, self._buffer = bytes(self._buffer), bytearray()
        return pending

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while True:
            if len(self._buffer) >= 3:
                self._check_prefix()
            if len(self._buffer) < HEADER.size:
                return frames
            _, _, length = HEADER.unpack_from(self._buffer)
            if length > self.max_frame_bytes:
                raise FrameTooLarge(length, self.max_frame_bytes)
            end = HEADER.size + length
            if len(self._buffer) < end:
                return frames
            frames.append(bytes(self._buffer[HEADER.size : end]))
            del self._buffer[:end]

    def _check_prefix(self) -> None:
        if self._buffer[:2] != MAGIC:
            raise ProtocolError(f"not an evcharge frame (starts with {bytes(self._buffer[:8])!r})")
        if self._buffer[2] != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {self._buffer[2]} is not supported (this is {PROTOCOL_VERSION})"
            )
