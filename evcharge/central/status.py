"""The status matrix: what central shows for a CP, and whether it may take a new session."""

from __future__ import annotations

import enum

from evcharge.protocol.messages import DenyCode, Health


class CpStatus(enum.StrEnum):
    ON = "ON"
    SUPPLYING = "SUPPLYING"
    STOPPED = "STOPPED"
    BROKEN = "BROKEN"
    DISCONNECTED = "DISCONNECTED"


def cp_status(*, monitor_connected: bool, health: Health | None, stopped: bool, supplying: bool) -> CpStatus:
    if not monitor_connected:
        return CpStatus.DISCONNECTED
    if health is not Health.OK:
        return CpStatus.BROKEN
    if stopped:
        return CpStatus.STOPPED
    if supplying:
        return CpStatus.SUPPLYING
    return CpStatus.ON


_DENIAL_FOR_STATUS = {
    CpStatus.SUPPLYING: (DenyCode.BUSY, "{cp} is busy with another session"),
    CpStatus.STOPPED: (DenyCode.STOPPED, "{cp} is out of order (stopped by the operator)"),
    CpStatus.BROKEN: (DenyCode.BROKEN, "{cp} is broken"),
    CpStatus.DISCONNECTED: (DenyCode.DISCONNECTED, "{cp} is not connected to central"),
}


def denial_for(cp_id: str, status: CpStatus | None) -> tuple[DenyCode, str] | None:
    """None when a request for this CP may be authorised; otherwise the code and a reason."""
    if status is None:
        return DenyCode.UNKNOWN_CP, f"{cp_id} is not a known charging point"
    if status is CpStatus.ON:
        return None
    code, reason = _DENIAL_FOR_STATUS[status]
    return code, reason.format(cp=cp_id)
