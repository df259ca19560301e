"""Central's audit log: one JSON line per registration, refusal, operator command, charge
decision and session outcome, with who, from where, and the result.

Append-only and flushed line by line, so what happened before a crash is on
disk. A full disk costs audit lines (said once in the log), never a decision.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from evcharge.central import facts as f
from evcharge.central.state import CentralState

log = logging.getLogger("evcharge.central.audit")


class AuditLog:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self.lost = 0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8", buffering=1)

    def record(self, action: str, *, who: str, peer: str = "", result: str = "ok", **details: Any) -> None:
        if self._file is None:
            return
        entry = {"at": round(time.time(), 3), "action": action, "who": who, "from": peer, "result": result}
        entry.update(details)
        try:
            self._file.write(json.dumps(entry) + "\n")
        except OSError as exc:
            if not self.lost:
                log.warning(
                    "the audit log %s cannot be written (%s): lines are lost until it can", self.path, exc
                )
            self.lost += 1
        else:
            if self.lost:
                log.info("the audit log %s is written again (%d lines were lost)", self.path, self.lost)
                self.lost = 0

    def observe(self, facts: Sequence[f.Fact], state: CentralState) -> None:
        for fact in facts:
            match fact:
                case f.CpRegistered(cp_id, _, _, peer, new):
                    self.record("register", who=cp_id, peer=peer, new=new)
                case f.RegistrationRefused(cp_id, peer, code, _):
                    self.record("register", who=cp_id, peer=peer, result=f"refused: {code}")
                case f.Authorised(driver_id, cp_id, session_id, request_id, _, source):
                    self.record(
                        "charge", who=driver_id, peer=source, cp=cp_id, session=session_id, request=request_id
                    )
                case f.Denied(driver_id, cp_id, request_id, code, _, _, source):
                    self.record(
                        "charge",
                        who=driver_id,
                        peer=source,
                        cp=cp_id,
                        request=request_id,
                        result=f"denied: {code}",
                    )
                case f.StopAsked(driver_id, session_id, cp_id, refused):
                    result = f"refused: {refused}" if refused else "ok"
                    self.record(
                        "stop_session",
                        who=driver_id,
                        peer="kafka",
                        cp=cp_id,
                        session=session_id,
                        result=result,
                    )
                case f.SessionClosed(s, by_central):
                    self.record(
                        "session_end",
                        who=s.driver_id,
                        peer="central" if by_central else s.cp_id,
                        cp=s.cp_id,
                        session=s.session_id,
                        reason=s.end_reason.value if s.end_reason else None,
                        wh=s.wh,
                        micro_eur=s.micro_eur,
                        revision=s.ticket_revision,
                    )
                case f.TicketRevised(s, before_wh, before_micro_eur):
                    self.record(
                        "ticket_revised",
                        who=s.driver_id,
                        peer=s.cp_id,
                        cp=s.cp_id,
                        session=s.session_id,
                        wh=s.wh,
                        micro_eur=s.micro_eur,
                        before_wh=before_wh,
                        before_micro_eur=before_micro_eur,
                        revision=s.ticket_revision,
                    )
                case f.OperatorChanged(cp_id, stopped, by, peer):
                    self.record("stop_cp" if stopped else "resume_cp", who=by, peer=peer, cp=cp_id)
                case f.CpForgotten(cp_id, by, peer):
                    self.record("forget_cp", who=by, peer=peer, cp=cp_id)
                case f.OperatorRefused(action, by, reason, peer):
                    self.record(action, who=by, peer=peer, result=f"refused: {reason}")
                case f.DeadLettered(topic, reason, "forged", claimed):
                    self.record(
                        "cp_event",
                        who=claimed,
                        peer="kafka",
                        topic=topic,
                        result=f"refused: forged: {reason}",
                    )
                case f.DriverEnrolled(driver_id, by, peer, again):
                    self.record("enrol_driver", who=by, peer=peer, driver=driver_id, renewed=again)
                case f.TlsRefused(peer, reason):
                    self.record("tls_handshake", who="unknown", peer=peer, result=f"refused: {reason}")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
