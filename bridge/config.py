"""`bridge.toml` → frozen dataclasses.

Every key has a default that runs the sandbox. A bad file raises :class:`ConfigError` whose
text is one line naming the file, the key and what is wrong; the CLI prints it and exits 2.
Secrets may come from the environment (``FAXBRIDGE_GOFAX_TOKEN`` and friends) so that the
file itself can be world-readable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bridge import redact

# Environment variables that override keys; secrets belong here rather than in the file.
ENV_OVERRIDES: Mapping[str, tuple[str, str]] = {
    "FAXBRIDGE_GOFAX_TOKEN": ("gofax", "token"),
    "FAXBRIDGE_GOFAX_BASE_URL": ("gofax", "base_url"),
    "FAXBRIDGE_SMARTHOST_PASSWORD": ("mail", "smarthost_password"),
    "FAXBRIDGE_WEBHOOK_PASSWORD": ("web", "webhook_password"),
}

SANDBOX = "sandbox"


class ConfigError(Exception):
    """One readable line: ``bridge.toml: [smtp] listen: expected "host:port", got "x"``."""

    def __init__(self, file: str, key: str, problem: str) -> None:
        self.file, self.key, self.problem = file, key, problem
        where = f"{file}: {key}: " if key else f"{file}: "
        super().__init__(where + problem)


# --- validators: each returns None when fine, else a description of what is wrong ---------

def _host_port(value: str, *, lowest_port: int = 1) -> str | None:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not lowest_port <= int(port) < 65536:
        return f'expected "host:port" (e.g. "127.0.0.1:2525"), got "{value}"'
    return None


def _listen(value: str) -> str | None:
    """A listening address; port 0 means any free port (tests, side-by-side sandboxes)."""
    return _host_port(value, lowest_port=0)


def _optional_host_port(value: str) -> str | None:
    return None if value == "" else _host_port(value)


_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}$")


def _domain(value: str) -> str | None:
    return None if _DOMAIN.match(value) else f'"{value}" is not a mail domain (lower case, e.g. "fax.local")'


def _address(value: str) -> str | None:
    name, addr = parseaddr(value)
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or " " in addr:
        return f'"{value}" is not an email address'
    try:
        Address(display_name=name, addr_spec=addr)
    except (ValueError, IndexError, TypeError) as exc:
        return f'"{value}" is not an email address ({exc})'
    return None


def _addresses(values: tuple[str, ...]) -> str | None:
    for value in values:
        if problem := _address(value):
            return problem
    return None


def _sender_pattern(values: tuple[str, ...]) -> str | None:
    for value in values:
        if value == "*" or (value.startswith("*@") and not _domain(value[2:].lower())):
            continue
        if _address(value):
            return f'"{value}" is not a sender pattern ("user@example.com", "*@example.com" or "*")'
    return None


def _networks(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f'"{value}" is not a network (e.g. "192.0.2.0/24" or "::1/128")'
    return None


def _base_url(value: str) -> str | None:
    if value == SANDBOX:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f'expected "sandbox" or an https URL (e.g. "https://restful-api.gofax.com.au"), got "{value}"'
    if parts.query or parts.fragment:
        return "the base URL must not carry a query string or fragment (the token goes in [gofax] token)"
    return None


def _positive(value: float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else f"must be 0 or more, got {value}"


def _one_of(*choices: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}"

    return check


def _timezone(value: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f'"{value}" is not a time zone name (e.g. "Australia/Sydney", "UTC")'
    return None


def _region(value: str) -> str | None:
    import phonenumbers  # local: only needed when validating

    if value in phonenumbers.SUPPORTED_REGIONS:
        return None
    return f'"{value}" is not a two-letter region code known to phonenumbers (e.g. "AU", "NZ", "US")'


def _sender_id(value: str) -> str | None:
    if re.fullmatch(r"\+?\d{8,15}", value):
        return None
    if re.fullmatch(r"[A-Za-z0-9]{1,11}", value) and not value.isdigit():
        return None
    return (f'"{value}" is not an SMS sender id: use at most 11 letters and digits with no '
            "spaces, or a mobile number")


def _digits_list(values: tuple[str, ...]) -> str | None:
    for value in values:
        if not re.fullmatch(r"\d{8,15}", value):
            return f'"{value}" is not a number in GoFax form (digits with country code, e.g. "61298765432")'
    return None


def _check(fn: Callable[[Any], str | None]) -> dict[str, Any]:
    return {"check": fn}


# --- the sections ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SmtpConfig:
    """Mail intake (the SMTP listener)."""

    listen: str = field(default="127.0.0.1:2525", metadata=_check(_listen))
    hostname: str = "faxbridge.localhost"
    fax_domain: str = field(default="fax.local", metadata=_check(_domain))
    sms_domain: str = field(default="sms.local", metadata=_check(_domain))
    max_message_bytes: int = field(default=20_000_000, metadata=_check(_positive))
    max_recipients: int = field(default=20, metadata=_check(_positive))
    max_connections: int = field(default=50, metadata=_check(_positive))
    idle_timeout_seconds: float = field(default=300, metadata=_check(_positive))
    trusted_networks: tuple[str, ...] = field(
        default=("127.0.0.0/8", "::1/128"), metadata=_check(_networks))
    allowed_senders: tuple[str, ...] = field(default=("*",), metadata=_check(_sender_pattern))
    tls_cert: str = ""
    tls_key: str = ""
    require_auth: bool = False
    users_file: str = ""
    require_dmarc: bool = False
    trusted_authserv_id: str = ""
    max_mime_parts: int = field(default=100, metadata=_check(_positive))
    max_mime_depth: int = field(default=10, metadata=_check(_positive))
    max_header_bytes: int = field(default=65_536, metadata=_check(_positive))


@dataclass(frozen=True)
class LimitsConfig:
    """Per-sender daily quotas (0 = no limit): a guard against spending the account's money."""

    faxes_per_day: int = field(default=200, metadata=_check(_non_negative))
    fax_pages_per_day: int = field(default=2000, metadata=_check(_non_negative))
    sms_parts_per_day: int = field(default=500, metadata=_check(_non_negative))


@dataclass(frozen=True)
class GoFaxConfig:
    """The GoFax account, or the built-in simulator."""

    base_url: str = field(default=SANDBOX, metadata=_check(_base_url))
    token: str = ""
    auth: str = field(default="query", metadata=_check(_one_of("query", "header")))
    timeout_seconds: float = field(default=30, metadata=_check(_positive))
    status_poll_seconds: float = field(default=30, metadata=_check(_positive))
    submit_concurrency: int = field(default=4, metadata=_check(_positive))
    retry_lifetime_seconds: float = field(default=86_400, metadata=_check(_positive))
    retry_initial_seconds: float = field(default=5, metadata=_check(_positive))
    retry_max_seconds: float = field(default=900, metadata=_check(_positive))
    status_lifetime_seconds: float = field(default=259_200, metadata=_check(_positive))
    sandbox_fax_seconds: float = field(default=5, metadata=_check(_non_negative))
    sandbox_listen: str = field(default="127.0.0.1:8099", metadata=_check(_listen))

    @property
    def is_sandbox(self) -> bool:
        return self.base_url == SANDBOX


@dataclass(frozen=True)
class NumbersConfig:
    """How phone numbers written in mail addresses are read."""

    default_region: str = field(default="AU", metadata=_check(_region))
    allow_premium: bool = False


@dataclass(frozen=True)
class FaxConfig:
    """Outgoing faxes."""

    cover: str = field(default="auto", metadata=_check(_one_of("auto", "always", "never")))


@dataclass(frozen=True)
class SmsConfig:
    """Outgoing SMS and replies."""

    sender_id: str = field(default="FaxBridge", metadata=_check(_sender_id))
    reply_numbers: tuple[str, ...] = field(default=(), metadata=_check(_digits_list))
    max_parts: int = field(default=6, metadata=_check(_positive))
    notify_success: bool = True


@dataclass(frozen=True)
class MailConfig:
    """Outgoing mail: notices and received faxes."""

    from_: str = field(default="Fax Bridge <faxbridge@localhost>", metadata={
        "check": _address, "key": "from"})
    smarthost: str = field(default="", metadata=_check(_optional_host_port))
    smarthost_user: str = ""
    smarthost_password: str = ""
    smarthost_starttls: bool = False
    maildir: str = "var/mailbox"
    retry_initial_seconds: float = field(default=30, metadata=_check(_positive))
    retry_max_seconds: float = field(default=1800, metadata=_check(_positive))


@dataclass(frozen=True)
class StoreConfig:
    """The durable job store (SQLite)."""

    path: str = "var/faxbridge.db"
    dedupe_days: float = field(default=7, metadata=_check(_positive))


@dataclass(frozen=True)
class RouteConfig:
    """One received-fax / SMS number and the mailboxes it is delivered to."""

    number: str = field(default="", metadata=_check(lambda v: _digits_list((v,))))
    to: tuple[str, ...] = field(default=(), metadata=_check(_addresses))


@dataclass(frozen=True)
class ReceiveConfig:
    """Incoming faxes and SMS replies."""

    poll_seconds: float = field(default=60, metadata=_check(_positive))
    default_to: tuple[str, ...] = field(
        default=("postmaster@localhost",), metadata=_check(_addresses))
    timezone: str = field(default="Australia/Sydney", metadata=_check(_timezone))
    route: tuple[RouteConfig, ...] = ()


@dataclass(frozen=True)
class WebConfig:
    """Webhooks from GoFax, /healthz and /metrics."""

    listen: str = field(default="127.0.0.1:8025", metadata=_check(_listen))
    webhook_user: str = ""
    webhook_password: str = ""


@dataclass(frozen=True)
class NoticesConfig:
    """Notice templates."""

    templates: str = ""  # a folder of overrides; empty = the shipped templates/


@dataclass(frozen=True)
class LogConfig:
    level: str = field(default="info", metadata=_check(
        _one_of("debug", "info", "warning", "error")))
    format: str = field(default="auto", metadata=_check(_one_of("auto", "console", "json")))


@dataclass(frozen=True)
class Config:
    smtp: SmtpConfig = SmtpConfig()
    limits: LimitsConfig = LimitsConfig()
    gofax: GoFaxConfig = GoFaxConfig()
    numbers: NumbersConfig = NumbersConfig()
    fax: FaxConfig = FaxConfig()
    sms: SmsConfig = SmsConfig()
    mail: MailConfig = MailConfig()
    store: StoreConfig = StoreConfig()
    receive: ReceiveConfig = ReceiveConfig()
    web: WebConfig = WebConfig()
    notices: NoticesConfig = NoticesConfig()
    log: LogConfig = LogConfig()
    source: str = field(default="<defaults>", metadata={"internal": True})
    # Relative paths in the file are relative to the file's folder.
    base_dir: str = field(default=".", metadata={"internal": True})

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else Path(self.base_dir) / p

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.gofax.token, self.mail.smarthost_password,
                                 self.web.webhook_password) if s)

    def route_for(self, number: str) -> tuple[str, ...]:
        for route in self.receive.route:
            if route.number == number:
                return route.to
        return self.receive.default_to


# --- loading ---------------------------------------------------------------------------------

def _key_name(f: dataclasses.Field[Any]) -> str:
    return str(f.metadata.get("key", f.name))


def _type_word(tp: Any) -> str:
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return "a list of strings"


def _convert(file: str, key: str, tp: Any, value: Any) -> Any:
    """Checks a TOML value against the field's type; returns the value in the field's type."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _) = typing.get_args(tp)
        if dataclasses.is_dataclass(item_tp):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(file, key, "expected [[tables]]")
            return tuple(_build(file, f"{key}[{i}]", item_tp, v) for i, v in enumerate(value))
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(file, key, f"expected a list of strings, got {value!r}")
        return tuple(value)
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(file, key, f"expected {_type_word(tp)}, got {value!r}")
    return value


def _build(file: str, where: str, cls: type[Any], table: Mapping[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {_key_name(f): f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise ConfigError(file, f"{where} {unknown[0]}".strip(),
                          f"unknown key (known: {', '.join(fields)})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in table:
            continue
        key = f"{where} {name}".strip()
        value = _convert(file, key, hints[f.name], table[name])
        check = f.metadata.get("check")
        if check and (problem := check(value)):
            raise ConfigError(file, key, problem)
        values[f.name] = value
    return cls(**values)


def _section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_mapping(data: Mapping[str, Any], *, source: str = "<mapping>",
                 base_dir: str = ".", env: Mapping[str, str] | None = None) -> Config:
    """Builds a Config from a parsed TOML document (used by tests and by :func:`load`)."""
    merged: dict[str, dict[str, Any]] = {k: dict(v) if isinstance(v, dict) else v
                                         for k, v in data.items()}
    for var, (section, key) in ENV_OVERRIDES.items():
        value = (os.environ if env is None else env).get(var)
        if value:
            target = merged.setdefault(section, {})
            if isinstance(target, dict):
                target[key] = value
    hints = typing.get_type_hints(Config)
    sections = {f.name: hints[f.name] for f in dataclasses.fields(Config) if _section(hints[f.name])}
    unknown = sorted(set(merged) - set(sections))
    if unknown:
        raise ConfigError(source, f"[{unknown[0]}]",
                          f"unknown section (known: {', '.join(sections)})")
    built: dict[str, Any] = {}
    for name, cls in sections.items():
        table = merged.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(source, name, f"expected a [{name}] table")
        built[name] = _build(source, f"[{name}]", cls, table)
    config = Config(**built, source=source, base_dir=base_dir)
    _check_whole(config)
    for secret in config.secrets():
        redact.register_secret(secret)
    return config


def _check_whole(config: Config) -> None:
    """Rules that involve more than one key."""
    src = config.source
    if not config.gofax.is_sandbox and not config.gofax.token:
        raise ConfigError(src, "[gofax] token",
                          "a real base_url needs a token (set it here or in FAXBRIDGE_GOFAX_TOKEN)")
    if config.gofax.base_url.startswith("http://") and not _is_loopback_url(config.gofax.base_url):
        raise ConfigError(src, "[gofax] base_url",
                          "plain http would send the token in clear text; use https")
    if config.smtp.fax_domain == config.smtp.sms_domain:
        raise ConfigError(src, "[smtp] sms_domain", "must differ from fax_domain")
    if bool(config.smtp.tls_cert) != bool(config.smtp.tls_key):
        raise ConfigError(src, "[smtp] tls_key", "tls_cert and tls_key go together (both or neither)")
    for key in ("tls_cert", "tls_key"):
        value = getattr(config.smtp, key)
        if value and not config.path(value).is_file():
            raise ConfigError(src, f"[smtp] {key}", f"no such file: {config.path(value)}")
    if config.smtp.users_file and not config.smtp.tls_cert:
        raise ConfigError(src, "[smtp] users_file",
                          "SMTP AUTH is offered only after STARTTLS: set tls_cert and tls_key too")
    if config.smtp.require_auth and not config.smtp.users_file:
        raise ConfigError(src, "[smtp] require_auth",
                          "needs users_file (and tls_cert/tls_key): otherwise nobody outside "
                          "trusted_networks could ever send")
    if config.smtp.require_dmarc and not config.smtp.trusted_authserv_id:
        raise ConfigError(src, "[smtp] trusted_authserv_id",
                          "require_dmarc needs the authserv-id of your MTA's Authentication-Results")
    if bool(config.web.webhook_user) != bool(config.web.webhook_password):
        raise ConfigError(src, "[web] webhook_password",
                          "webhook_user and webhook_password go together (both or neither)")
    if config.gofax.retry_initial_seconds > config.gofax.retry_max_seconds:
        raise ConfigError(src, "[gofax] retry_initial_seconds",
                          "must not be larger than retry_max_seconds")
    seen: set[str] = set()
    for i, route in enumerate(config.receive.route):
        if not route.number:
            raise ConfigError(src, f"[receive] route[{i}] number", "is required")
        if not route.to:
            raise ConfigError(src, f"[receive] route[{i}] to", "needs at least one address")
        if route.number in seen:
            raise ConfigError(src, f"[receive] route[{i}] number", f"{route.number} is routed twice")
        seen.add(route.number)


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Reads and validates a config file. Raises ConfigError (never anything else)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(p), "", "file not found") from None
    except OSError as exc:
        raise ConfigError(str(p), "", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(p), "", "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), "", f"not valid TOML: {exc}") from None
    return from_mapping(data, source=str(p), base_dir=str(p.resolve().parent), env=env)


def defaults(**sections: Any) -> Config:
    """A Config from defaults with some sections replaced, for tests and embedding."""
    return dataclasses.replace(Config(), **sections)


__all__ = ["SANDBOX", "Config", "ConfigError", "defaults", "from_mapping", "load"]
