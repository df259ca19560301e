"""What differs between OCPP 1.6 and 2.0.1 for the calls the gateway makes and the facts it reads.

Pure: payloads built and results read, no I/O. Everything else the gateway does
is the same for both versions; a `Dialect` is the only place that knows how a
version spells a remote start, an availability change, a password or a status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from evcharge.gateway.wire import Version

ACCEPTED = "Accepted"


@dataclass(frozen=True)
class Boot:
    vendor: str
    model: str


@dataclass(frozen=True)
class Status:
    where: tuple[int, int]
    status: str
    error_code: str


class Dialect(Protocol):
    version: Version
    id_token_max: int

    def boot(self, payload: dict[str, Any]) -> Boot: ...
    def status(self, payload: dict[str, Any]) -> Status: ...
    def id_token(self, payload: dict[str, Any]) -> str: ...
    def id_token_answer(self, status: str) -> dict[str, Any]: ...
    def remote_start(self, driver_id: str, remote_start_id: int | None) -> tuple[str, dict[str, Any]]: ...
    def remote_stop(self, tx_id: str) -> tuple[str, dict[str, Any]]: ...
    def availability(self, operative: bool) -> tuple[str, dict[str, Any]]: ...
    def set_password(self, password: str) -> tuple[str, dict[str, Any]]: ...
    def accepted(self, action: str, result: dict[str, Any]) -> bool: ...


class V16:
    version = Version.V16
    id_token_max = 20  # CiString20

    def boot(self, payload: dict[str, Any]) -> Boot:
        return Boot(payload["chargePointVendor"], payload["chargePointModel"])

    def status(self, payload: dict[str, Any]) -> Status:
        return Status((int(payload["connectorId"]), 0), payload["status"], payload.get("errorCode", ""))

    def id_token(self, payload: dict[str, Any]) -> str:
        return str(payload["idTag"])

    def id_token_answer(self, status: str) -> dict[str, Any]:
        return {"idTagInfo": {"status": status}}

    def remote_start(self, driver_id: str, remote_start_id: int | None) -> tuple[str, dict[str, Any]]:
        return "RemoteStartTransaction", {"connectorId": 1, "idTag": driver_id}

    def remote_stop(self, tx_id: str) -> tuple[str, dict[str, Any]]:
        return "RemoteStopTransaction", {"transactionId": int(tx_id)}

    def availability(self, operative: bool) -> tuple[str, dict[str, Any]]:
        return "ChangeAvailability", {"connectorId": 0, "type": "Operative" if operative else "Inoperative"}

    def set_password(self, password: str) -> tuple[str, dict[str, Any]]:
        return "ChangeConfiguration", {"key": "AuthorizationKey", "value": password}

    def accepted(self, action: str, result: dict[str, Any]) -> bool:
        # A change of availability during a transaction is Scheduled: it happens when it ends.
        return result.get("status") in (ACCEPTED, "Scheduled")


class V201:
    version = Version.V201
    id_token_max = 36  # IdTokenType.idToken

    def boot(self, payload: dict[str, Any]) -> Boot:
        station = payload["chargingStation"]
        return Boot(station["vendorName"], station["model"])

    def status(self, payload: dict[str, Any]) -> Status:
        return Status((int(payload["evseId"]), int(payload["connectorId"])), payload["connectorStatus"], "")

    def id_token(self, payload: dict[str, Any]) -> str:
        return str(payload["idToken"]["idToken"])

    def id_token_answer(self, status: str) -> dict[str, Any]:
        return {"idTokenInfo": {"status": status}}

    def remote_start(self, driver_id: str, remote_start_id: int | None) -> tuple[str, dict[str, Any]]:
        return "RequestStartTransaction", {
            "idToken": {"idToken": driver_id, "type": "Central"},
            "remoteStartId": remote_start_id or 0,
            "evseId": 1,
        }

    def remote_stop(self, tx_id: str) -> tuple[str, dict[str, Any]]:
        return "RequestStopTransaction", {"transactionId": tx_id}

    def availability(self, operative: bool) -> tuple[str, dict[str, Any]]:
        return "ChangeAvailability", {"operationalStatus": "Operative" if operative else "Inoperative"}

    def set_password(self, password: str) -> tuple[str, dict[str, Any]]:
        return "SetVariables", {
            "setVariableData": [
                {
                    "attributeValue": password,
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "BasicAuthPassword"},
                }
            ]
        }

    def accepted(self, action: str, result: dict[str, Any]) -> bool:
        if action == "SetVariables":
            results = result.get("setVariableResult", [])
            return bool(results) and all(r.get("attributeStatus") == ACCEPTED for r in results)
        return result.get("status") in (ACCEPTED, "Scheduled")


def dialect(version: Version) -> Dialect:
    return V16() if version is Version.V16 else V201()
