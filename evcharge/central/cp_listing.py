"""`GET /cp`'s body, encoded once per change rather than once per request.

Dashboards poll the whole list, often, and almost always get what they got last
time: building a thousand CPs' JSON for each of them cost central about 10 ms
of its one core per answer, and every decision waited behind it. Here each CP's
JSON is encoded (msgspec) when the CP changed and kept as bytes; the body is
those bytes joined, and is itself kept until any change is applied. A poll that
finds nothing changed costs a version comparison.

What changed is known from `CentralState`'s versions: every `apply()` bumps the
state's and stamps the CPs it touched. A state replaced wholesale (central
loaded its store again) is a new object and starts the cache afresh.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from evcharge.central.state import CentralState
from evcharge.central.view import cp_json

_encode = msgspec.json.Encoder().encode


class CpListing:
    def __init__(self, state: Callable[[], CentralState]) -> None:
        self._state = state
        self._of: CentralState | None = None
        self._version = -1
        self._body = b""
        self._parts: dict[str, tuple[int, bytes]] = {}  # cp_id -> (its version when encoded, its JSON)

    def body(self) -> bytes:
        """`{"charging_points": [...]}` as `cps_json` would give it, sorted by CP id, as JSON bytes."""
        state = self._current()
        if state.version == self._version:
            return self._body
        parts = self._parts
        for gone in parts.keys() - state.cps.keys():
            del parts[gone]
        self._body = (
            b'{"charging_points":[' + b",".join(self._one(state, c) for c in sorted(state.cps)) + b"]}"
        )
        self._version = state.version
        return self._body

    def cp(self, cp_id: str) -> bytes:
        """One known CP's JSON, as `cp_json` would give it, from the same cache."""
        return self._one(self._current(), cp_id)

    def _current(self) -> CentralState:
        state = self._state()
        if state is not self._of:
            self._of, self._parts, self._version = state, {}, -1
        return state

    def _one(self, state: CentralState, cp_id: str) -> bytes:
        version = state.cp_versions.get(cp_id, 0)
        kept = self._parts.get(cp_id)
        if kept is None or kept[0] != version:
            kept = self._parts[cp_id] = (version, _encode(cp_json(state, cp_id)))
        return kept[1]
