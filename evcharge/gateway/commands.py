"""Central's commands for the gateway's chargers (`evcharge.cp.commands`), done as OCPP calls.

What a command changes is recorded before the inbox commits it (a pending
start, the operator's stop flag); the call to the charger then runs as an owned
task, so one slow charger never holds up the commands of the others. A start
that central addressed to another gateway process (its `engine` is not ours),
or took back in the same batch, is not started.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from evcharge.cp.engine_commands import withdrawn
from evcharge.gateway.authorisation import Authoriser
from evcharge.gateway.charger import ChargerSession
from evcharge.gateway.recorder import TransactionRecorder
from evcharge.gateway.registry import Registry
from evcharge.gateway.store import GatewayStore
from evcharge.gateway.tasks import OwnedTasks
from evcharge.protocol.messages import EndReason, ResumeCp, SessionRefused, StartSupply, StopCp, StopSupply
from evcharge.runtime.inbox import Delivery

log = logging.getLogger("evcharge.gateway")

Command = StartSupply | StopSupply | StopCp | ResumeCp


class CommandDesk:
    def __init__(
        self,
        store: GatewayStore,
        registry: Registry,
        recorder: TransactionRecorder,
        authoriser: Authoriser,
        tasks: OwnedTasks,
        *,
        instance: str,
    ) -> None:
        self._store = store
        self._registry = registry
        self._recorder = recorder
        self._authoriser = authoriser
        self._tasks = tasks
        self._instance = instance

    async def handle(self, deliveries: Sequence[Delivery[Any]]) -> None:
        commands: list[Command] = [d.message for d in deliveries]
        taken_back = withdrawn(commands)
        for command in commands:
            if await self._store.charger(command.cp_id) is None:
                continue  # not a charger of this gateway: an engine's, or another gateway's
            if isinstance(command, StartSupply):
                await self._start(command, command.session_id in taken_back)
            elif isinstance(command, StopSupply):
                await self._stop(command)
            else:
                await self._availability(command.cp_id, stopped=isinstance(command, StopCp))

    def _session(self, cp_id: str) -> ChargerSession | None:
        live = self._registry.get(cp_id)
        return live.session if live is not None else None

    async def _start(self, command: StartSupply, taken_back: bool) -> None:
        cp_id, session_id = command.cp_id, command.session_id
        if command.engine is not None and command.engine != self._instance:
            log.info("%s: session %s is for another gateway process: not ours", cp_id, session_id[:8])
            return
        # An RFID start goes through "being asked" -> pending -> bound to its transaction, each
        # before the previous one ends: asked in that order, one of them is always seen.
        if self._authoriser.asking(cp_id, command.driver_id):
            # Central's answer to our own question, read before its HTTP reply: the card's start follows.
            await self._store.add_pending(
                cp_id, session_id, command.driver_id, command.price, "rfid", remote=False
            )
            return
        if await self._store.pending(session_id) is not None:
            return  # authorised at the charger (its start follows), or this command read again
        if await self._store.txn_of_session(session_id) is not None:
            return  # the transaction it is for is running already (an RFID start bound it)
        reason = None
        session = self._session(cp_id)
        if taken_back:
            reason = "withdrawn by central before the gateway read it"
        elif session is None:
            reason = "the charger is not connected to the gateway"
        elif await self._store.running_txn(cp_id) is not None:
            reason = "the charger is busy with another transaction"
        if reason is not None:
            log.info("%s refused session %s: %s", cp_id, session_id[:8], reason)
            await self._recorder.publish([SessionRefused(cp_id=cp_id, session_id=session_id, reason=reason)])
            return
        assert session is not None
        start = await self._store.add_pending(
            cp_id, session_id, command.driver_id, command.price, "remote", remote=True
        )
        self._tasks.start(session.remote_start(start), name=f"remote start {cp_id}")

    async def _stop(self, command: StopSupply) -> None:
        if await self._store.drop_pending(command.session_id):
            return  # not started yet: it never will be
        txn = await self._store.txn_of_session(command.session_id)
        if txn is None or txn.ended:
            return
        session = self._session(command.cp_id)
        if session is None:
            # Asked again when the charger is back (ChargerSession resends recorded stops).
            await self._store.set_stop_reason(command.cp_id, txn.tx_id, command.reason)
            log.warning("%s is not connected: its stop of session %s waits", command.cp_id, txn.session_id)
            return
        self._tasks.start(session.stop_transaction(txn.tx_id, command.reason), name=f"stop {command.cp_id}")

    async def _availability(self, cp_id: str, *, stopped: bool) -> None:
        await self._store.set_stopped(cp_id, stopped)
        session = self._session(cp_id)
        txn = await self._store.running_txn(cp_id) if stopped else None
        if session is None:
            if txn is not None:
                await self._store.set_stop_reason(cp_id, txn.tx_id, EndReason.OPERATOR)
            return
        session.operator_stopped(stopped)

        async def carry_out() -> None:
            if txn is not None:
                await session.stop_transaction(txn.tx_id, EndReason.OPERATOR)
            await session.set_available(not stopped)

        self._tasks.start(carry_out(), name=f"availability {cp_id}")
