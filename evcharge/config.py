"""Every setting defined once: a field of a role's settings dataclass, with its flag, its
`EVCHARGE_*` variable, its help and its default.

The `evcharge` command's options are derived from these fields (`command`), and
so are the command lines the demo, the tests and the benchmark start roles with
(`argv`), so a default or a flag name lives in exactly one place. One variable
has one meaning: no two settings share an environment variable.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import typer

from evcharge.errors import ConfigError
from evcharge.runtime.kafka_access import KafkaAccess
from evcharge.runtime.tls import TlsFiles

S = TypeVar("S")


@dataclass(frozen=True)
class Opt:
    help: str
    env: str | None
    flag: str | None = None  # default: --the-field-name
    parse: Callable[[Any], Any] | None = None  # CLI text -> field value; ValueError names the problem
    show: Callable[[Any], str] | None = None  # field value -> CLI text (inverse of parse)
    hidden: bool = False
    cli: bool = True  # False: set by code only (a test hook, a derived value)


def opt(default: Any, help: str, env: str | None = None, **kw: Any) -> Any:
    """A setting with a default."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are not settings")
    return field(default=default, metadata={"opt": Opt(help, env, **kw)})


def required(help: str, env: str | None = None, **kw: Any) -> Any:
    """A setting the user must give (an id)."""
    return field(metadata={"opt": Opt(help, env, **kw)})


def internal(default: Any) -> Any:
    """A field set by code, never a flag (a retry policy injected by tests, a derived path)."""
    return field(default=default, metadata={"opt": Opt("", None, cli=False)})


def _opt(f: dataclasses.Field[Any]) -> Opt | None:
    o = f.metadata.get("opt")
    return o if isinstance(o, Opt) and o.cli else None


def env_var(f: dataclasses.Field[Any]) -> str | None:
    """The environment variable a setting is read from, if it has one."""
    o = _opt(f)
    return o.env if o is not None else None


def flag_of(f: dataclasses.Field[Any]) -> str:
    o = _opt(f)
    assert o is not None
    return o.flag or "--" + f.name.replace("_", "-")


def _cli_type(hint: Any, o: Opt) -> Any:
    if o.parse is not None:
        optional = type(None) in typing.get_args(hint)
        return str | None if optional else str
    return hint


def command(
    app: typer.Typer,
    settings_cls: type[S],
    run: Callable[[S], None],
    *,
    name: str,
    help: str,
    extra: dict[str, tuple[Any, Any]] | None = None,
    adjust: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> None:
    """Register `evcharge NAME` with one option per setting of `settings_cls`.

    `extra` adds options that are not settings (name -> (annotation, typer.Option));
    `adjust` may fill settings from them (or from each other) before the dataclass is built.
    """
    hints = typing.get_type_hints(settings_cls)
    fields = [f for f in dataclasses.fields(settings_cls) if _opt(f) is not None]  # type: ignore[arg-type]
    parameters = []
    annotations: dict[str, Any] = {}
    for f in fields:
        o = _opt(f)
        assert o is not None
        flag = flag_of(f)
        has_default = f.default is not dataclasses.MISSING
        default = f.default if has_default else ...
        if has_default and o.parse is not None and default is not None:
            default = (o.show or str)(default)
        annotation = _cli_type(hints[f.name], o)
        option = typer.Option(default, flag, envvar=o.env, help=o.help, hidden=o.hidden, show_default=True)
        parameters.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option))
        annotations[f.name] = annotation
    for extra_name, (annotation, option) in (extra or {}).items():
        parameters.append(inspect.Parameter(extra_name, inspect.Parameter.KEYWORD_ONLY, default=option))
        annotations[extra_name] = annotation

    def invoke(**values: Any) -> None:
        for f in fields:
            o = _opt(f)
            assert o is not None
            if o.parse is not None and values.get(f.name) is not None:
                try:
                    values[f.name] = o.parse(values[f.name])
                except ValueError as exc:
                    raise typer.BadParameter(str(exc), param_hint=flag_of(f)) from None
        if adjust is not None:
            values = adjust(values)
        known = {f.name for f in dataclasses.fields(settings_cls)}  # type: ignore[arg-type]
        try:
            settings = settings_cls(**{k: v for k, v in values.items() if k in known})
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        run(settings)

    invoke.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    invoke.__annotations__ = annotations
    invoke.__doc__ = help
    invoke.__name__ = name
    app.command(name=name, help=help)(invoke)


# Settings that are secrets: any user of the machine can read a command line (/proc/<pid>/cmdline),
# only the process's own user its environment.
SECRETS = frozenset({"join_token", "operator_token", "kafka_password", "token"})


def secrets_env(settings: Any) -> dict[str, str]:
    """The secrets among `settings` that are set, by the environment variable that carries each:
    how a process started with these settings is given them, never on its command line."""
    env: dict[str, str] = {}
    for f in dataclasses.fields(settings):
        variable, value = env_var(f), getattr(settings, f.name)
        if f.name in SECRETS and value is not None and variable is not None:
            env[variable] = value
    return env


def argv(settings: Any, *, only_changed: bool = True, leave_out: frozenset[str] = frozenset()) -> list[str]:
    """The flags that make `evcharge <role>` run with exactly `settings` (defaults left out, and
    the fields named in `leave_out`)."""
    args: list[str] = []
    for f in dataclasses.fields(settings):
        o = _opt(f)
        if o is None or f.name in leave_out:
            continue
        value = getattr(settings, f.name)
        if only_changed and f.default is not dataclasses.MISSING and value == f.default:
            continue
        flag = flag_of(f)
        if isinstance(value, bool):
            on, _, off = flag.partition("/")
            if off:
                args.append(on if value else off)
            elif value:
                args.append(flag)
            continue
        if value is None:
            continue
        text = (o.show or _text)(value)
        args += [flag, text]
    return args


def _text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


DEFAULT_KAFKA = "127.0.0.1:9092"
DEFAULT_STATE_DIR = Path("evcharge-state")
DEFAULT_CENTRAL_URL = "http://127.0.0.1:8000"
DEFAULT_CENTRAL = "127.0.0.1:7000"


def kafka_setting() -> Any:
    return opt(
        DEFAULT_KAFKA, "Kafka bootstrap servers: HOST:PORT, or several separated by commas.", "EVCHARGE_KAFKA"
    )


def state_dir_setting() -> Any:
    return opt(
        DEFAULT_STATE_DIR,
        "Where this process keeps its durable state (SQLite files, locks).",
        "EVCHARGE_STATE_DIR",
    )


def partitions_setting() -> Any:
    return opt(8, "Partitions for each topic when this process has to create it.", "EVCHARGE_PARTITIONS")


def host_port(value: str, what: str) -> tuple[str, int]:
    """HOST:PORT as a pair; ValueError naming `what` otherwise."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what} must be HOST:PORT, not {value!r}")
    return host, int(port)


def host_ports(value: str, what: str) -> tuple[tuple[str, int], ...]:
    """HOST:PORT[,HOST:PORT...]: every address of a redundant service, in order of preference."""
    parts = [p for p in value.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{what} needs at least one HOST:PORT")
    return tuple(host_port(p, what) for p in parts)


def show_host_ports(value: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"{h}:{p}" for h, p in value)


@dataclass(frozen=True, kw_only=True)
class Logging:
    """What every role takes: how it logs."""

    log_level: str = opt("info", "debug, info, warning or error.", "EVCHARGE_LOG_LEVEL")
    log_json: bool = opt(False, "Log one JSON object per line.", "EVCHARGE_LOG_JSON")


@dataclass(frozen=True, kw_only=True)
class Tls:
    """What every role takes for TLS: the CA its peers are checked against, and its own identity."""

    ca: Path | None = opt(
        None,
        "PEM file of the CA that signs the peers' certificates: with it this role's links (central's "
        "ports, its HTTP API, Kafka) speak TLS and check the name of who answers.",
        "EVCHARGE_TLS_CA",
    )
    cert: Path | None = opt(
        None,
        "This role's own certificate (PEM): the one central serves; the others show it when asked.",
        "EVCHARGE_TLS_CERT",
    )
    key: Path | None = opt(None, "The private key of --cert (PEM).", "EVCHARGE_TLS_KEY")

    @property
    def tls(self) -> TlsFiles:
        try:
            return TlsFiles(self.ca, self.cert, self.key)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


@dataclass(frozen=True, kw_only=True)
class KafkaLink(Tls):
    """Where Kafka is and who this role is there: with a user, SASL/SCRAM over TLS (--ca)."""

    kafka: str = kafka_setting()
    kafka_user: str | None = opt(
        None,
        "SCRAM user on the broker (SASL_SSL, with --ca); the broker's ACLs say what it may do.",
        "EVCHARGE_KAFKA_USER",
    )
    kafka_password: str | None = opt(None, "The SCRAM user's password.", "EVCHARGE_KAFKA_PASSWORD")

    @property
    def kafka_access(self) -> KafkaAccess:
        if self.kafka_user is None:
            return KafkaAccess(self.kafka)
        if self.ca is None or not self.kafka_password:
            raise ConfigError("--kafka-user needs --kafka-password and --ca (SASL over TLS)")
        return KafkaAccess(self.kafka, self.kafka_user, self.kafka_password, self.tls)
