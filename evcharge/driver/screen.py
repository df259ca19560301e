"""What a driver shows: lines for a person, and the same events as JSON lines for programs.

Every event is written and flushed before the caller goes on, so an event that
was shown is on the screen (or in the file) even if the process dies the next
instant; `--json` replaces the lines for people with the events.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from evcharge.driver.journal import Outcome
from evcharge.driver.requests_file import RequestLine
from evcharge.protocol.messages import ChargingProgress, RequestAccepted, RequestDenied, Ticket
from evcharge.protocol.units import eur_text, kw_text, kwh_text, price_text


class Screen:
    def __init__(self, driver_id: str, *, json_lines: bool = False, events: Path | None = None) -> None:
        self.driver_id = driver_id
        self.console: Console | None = None if json_lines else Console(highlight=False, soft_wrap=True)
        self._streams: list[IO[str]] = []
        if json_lines:
            self._streams.append(sys.stdout)
        if events is not None:
            events.parent.mkdir(parents=True, exist_ok=True)
            self._streams.append(events.open("a", encoding="utf-8", buffering=1))

    def close(self) -> None:
        for stream in self._streams:
            if stream is not sys.stdout:
                stream.close()

    def event(self, name: str, **fields: Any) -> None:
        if not self._streams:
            return
        line = json.dumps({"event": name, "ts": round(time.time(), 3), "driver_id": self.driver_id, **fields})
        for stream in self._streams:
            stream.write(line + "\n")
            stream.flush()

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)
            self.console.file.flush()

    # ------------------------------------------------------------ events

    def ready(self, kafka: str, instance: str) -> None:
        self.say(f"[bold]{self.driver_id}[/] ready (Kafka {kafka})")
        self.event("ready", pid=os.getpid(), instance=instance, kafka=kafka)

    def requested(self, cp_id: str, request_id: str, index: int, resent: bool) -> None:
        if resent:
            self.say(f"waiting for the answer to request {index + 1} ({cp_id}) sent before a restart")
        else:
            self.say(f"→ requesting a charge at [bold]{cp_id}[/]")
        self.event("requested", cp_id=cp_id, request_id=request_id, index=index, resent=resent)

    def accepted(self, update: RequestAccepted) -> None:
        price = price_text(update.price)
        self.say(f"✔ accepted: [bold]{update.cp_id}[/] session {update.session_id} at {price} EUR/kWh")
        self.event(
            "accepted",
            request_id=update.request_id,
            session_id=update.session_id,
            cp_id=update.cp_id,
            price=update.price,
        )

    def progress(self, update: ChargingProgress) -> None:
        if update.seq == 0:
            self.say(f"⚡ charging at {update.cp_id} (session {update.session_id[:8]})")
        else:
            self.say(
                f"⚡ {update.cp_id}: {kw_text(update.power_w)} kW  {kwh_text(update.wh)} kWh  "
                f"{eur_text(update.micro_eur)} EUR"
            )
        self.event(
            "progress",
            session_id=update.session_id,
            cp_id=update.cp_id,
            seq=update.seq,
            power_w=update.power_w,
            wh=update.wh,
            micro_eur=update.micro_eur,
        )

    def denied(self, update: RequestDenied) -> None:
        self.say(f"✘ denied: {update.cp_id or 'request'}: {update.reason} \\[{update.code.value}]")
        self.event(
            "denied",
            request_id=update.request_id,
            cp_id=update.cp_id,
            code=update.code.value,
            reason=update.reason,
        )

    def ticket(self, ticket: Ticket, *, late: bool) -> None:
        figures = (
            f"cp={ticket.cp_id} session={ticket.session_id} kwh={kwh_text(ticket.wh)} "
            f"eur={eur_text(ticket.micro_eur)} ended={ticket.end_reason.value}"
        )
        away = " (missed while away)" if late else ""
        if ticket.revision > 1:
            self.say(f"🎫 corrected ticket (revision {ticket.revision}, replaces the first){away} {figures}")
        else:
            mark = " (provisional: the CP's meter will confirm it)" if ticket.provisional else ""
            self.say(f"🎫 ticket{away} {figures}{mark}")
        self.event(
            "ticket",
            session_id=ticket.session_id,
            request_id=ticket.request_id,
            cp_id=ticket.cp_id,
            started_at=ticket.started_at,
            ended_at=ticket.ended_at,
            wh=ticket.wh,
            micro_eur=ticket.micro_eur,
            price=ticket.price,
            end_reason=ticket.end_reason.value,
            revision=ticket.revision,
            provisional=ticket.provisional,
            replaces=ticket.replaces,
            late=late,
        )

    def no_answer(self, cp_id: str, request_id: str, timeout_s: float) -> None:
        self.say(f"✘ no answer from central within {timeout_s:g} s for {cp_id}")
        self.event("no_answer", cp_id=cp_id, request_id=request_id, timeout_s=timeout_s)

    def settling(self, pending: list[Outcome], timeout_s: float) -> None:
        sessions = ", ".join(f"{o.session_id[:8] if o.session_id else '?'} at {o.cp_id}" for o in pending)
        confirm = "for the CP's meter to confirm the provisional ticket of"
        self.say(f"waiting up to {timeout_s:g} s {confirm} {sessions}")
        self.event("settling", sessions=[o.session_id for o in pending], timeout_s=timeout_s)

    def unsettled(self, pending: list[Outcome]) -> None:
        for o in pending:
            self.say(
                f"the ticket of session {o.session_id} at {o.cp_id} stays provisional for now; a correction "
                "would be shown at this driver's next start"
            )
        self.event("unsettled", sessions=[o.session_id for o in pending])

    def summary(self, outcomes: list[Outcome], requests: list[RequestLine]) -> None:
        if self.console is not None:
            table = Table(title=f"{self.driver_id}: {len(outcomes)} requests")
            for column in ("#", "line", "CP", "outcome", "kWh", "EUR", "detail"):
                table.add_column(column)
            for o in outcomes:
                table.add_row(
                    str(o.idx + 1),
                    str(requests[o.idx].number) if o.idx < len(requests) else "?",
                    o.cp_id,
                    o.outcome,
                    kwh_text(o.wh) if o.wh is not None else "",
                    eur_text(o.micro_eur) if o.micro_eur is not None else "",
                    o.detail,
                )
            self.console.print(table)
        total_wh = sum(o.wh or 0 for o in outcomes)
        total_eur = sum(o.micro_eur or 0 for o in outcomes)
        unanswered = sum(o.outcome == "no answer" for o in outcomes)
        self.say(
            f"summary: {len(outcomes)} requests, {kwh_text(total_wh)} kWh, {eur_text(total_eur)} EUR"
            + (f", {unanswered} unanswered" if unanswered else "")
        )
        self.event(
            "summary",
            requests=len(outcomes),
            wh=total_wh,
            micro_eur=total_eur,
            unanswered=unanswered,
            outcomes=[
                {
                    "index": o.idx,
                    "cp_id": o.cp_id,
                    "outcome": o.outcome,
                    "session_id": o.session_id,
                    "wh": o.wh,
                    "micro_eur": o.micro_eur,
                    "revision": o.revision,
                }
                for o in outcomes
            ],
        )
