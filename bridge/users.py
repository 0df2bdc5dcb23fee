"""SMTP AUTH users: the users file (salted scrypt hashes) and the password check.

The file, ``[smtp] users_file``, has one user per line, written by ``faxbridge user add``::

    # name   password hash                                  addresses the user may send as
    alice    scrypt$16384$8$1$<salt, base64>$<hash, base64>   alice@example.com *@example.org

- **Hashes** are ``hashlib.scrypt`` (stdlib, memory-hard) with a random 16-byte salt per user and
  the cost parameters stored in the hash, so they can be raised later without breaking old
  entries. The default, N=2^14, r=8, p=1 (16 MiB), takes about 30 ms per check on one core:
  slow enough that a stolen file is expensive to attack, fast enough for an MTA that logs in for
  every mail. A password is compared as the exact UTF-8 bytes the client sent (no SASLprep).
- **Addresses** bind a login to the senders it may use: exact addresses or ``*@domain`` (that
  domain only, like ``[smtp] allowed_senders``). ``*`` alone is not accepted: a login that may
  claim to be anyone would undo the binding.

:class:`Authenticator` is what the SMTP session asks. Its :meth:`~Authenticator.check` is
blocking CPU work (scrypt): the intake runs it in a worker thread, at most a few at a time (see
:mod:`bridge.intake.server`), so the event loop never waits for it. It

- re-reads the file when it changes (``faxbridge user add`` needs no restart), and fails closed:
  a missing or broken file means nobody can log in, never "anyone can";
- spends the same scrypt work for an unknown user as for a known one, so the answer time does not
  tell which user names exist;
- remembers recent *successful* checks for ``cache_seconds`` (an MTA logs in once per
  connection, often many times a minute), keyed by an HMAC with a per-process random key of
  (user, stored hash, password): a cache entry reveals nothing about the password, and a changed
  password or removed user no longer matches. Failures are never cached.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from bridge import policy

__all__ = [
    "DEFAULT_PARAMS",
    "Authenticator",
    "ScryptParams",
    "User",
    "UsersFileError",
    "add_user",
    "format_users",
    "hash_password",
    "load_users",
    "parse_users",
    "save_users",
    "valid_address_pattern",
    "valid_user_name",
    "verify_password",
]

log = structlog.get_logger(__name__)

SCHEME = "scrypt"
SALT_BYTES = 16
KEY_BYTES = 32


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost: memory is 128 * r * n bytes (16 MiB for the default), time grows with n * r."""

    n: int = 2**14
    r: int = 8
    p: int = 1

    def check(self) -> None:
        # Bounds keep a hand-edited file from asking for gigabytes or minutes per login.
        if not (2 <= self.n <= 2**20 and self.n & (self.n - 1) == 0):
            raise ValueError(f"scrypt n must be a power of two between 2 and 2^20, got {self.n}")
        if not (1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise ValueError(f"scrypt r must be 1..32 and p 1..16, got r={self.r} p={self.p}")

    @property
    def maxmem(self) -> int:
        return 2 * 128 * self.r * self.n * self.p + (1 << 20)


DEFAULT_PARAMS = ScryptParams()


class UsersFileError(ValueError):
    """The users file cannot be read; the text names the file and line."""


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    addresses: tuple[str, ...]

    def may_send_as(self, address: str) -> bool:
        return policy.sender_allowed(address, self.addresses)


# --- hashing ------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str | bytes, *, params: ScryptParams = DEFAULT_PARAMS,
                  salt: bytes | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` for a password (str is encoded as UTF-8)."""
    params.check()
    secret = password.encode("utf-8") if isinstance(password, str) else password
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    key = hashlib.scrypt(secret, salt=salt, n=params.n, r=params.r, p=params.p,
                         dklen=KEY_BYTES, maxmem=params.maxmem)
    return f"{SCHEME}${params.n}${params.r}${params.p}${_b64(salt)}${_b64(key)}"


def _decode_hash(encoded: str) -> tuple[ScryptParams, bytes, bytes]:
    """(params, salt, key) of an encoded hash; ValueError when it is not one we wrote."""
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not a scrypt$n$r$p$salt$hash password hash")
    try:
        params = ScryptParams(int(parts[1]), int(parts[2]), int(parts[3]))
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"malformed password hash ({exc})") from None
    params.check()
    if len(salt) < 8 or len(key) < 16:
        raise ValueError("password hash salt or key too short")
    return params, salt, key


def verify_password(password: str | bytes, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (constant-time comparison of the keys)."""
    try:
        params, salt, key = _decode_hash(encoded)
    except ValueError:
        return False
    secret = password.encode("utf-8") if isinstance(password, str) else password
    candidate = hashlib.scrypt(secret, salt=salt, n=params.n, r=params.r, p=params.p,
                               dklen=len(key), maxmem=params.maxmem)
    return hmac.compare_digest(candidate, key)


@functools.cache
def _dummy_hash() -> str:
    """A hash nobody knows the password of, checked for unknown users (same cost as a real one)."""
    return hash_password(secrets.token_bytes(16))


# --- the file -----------------------------------------------------------------------------

_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}")
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")

HEADER = ("# faxbridge SMTP AUTH users: name, password hash, addresses the user may send as.\n"
          "# Managed with `faxbridge user add|remove|list`. Hashes are scrypt with a salt per user.\n")


def valid_user_name(name: str) -> bool:
    """Letters, digits and ``._@+-`` (an email address works), at most 128 characters."""
    return bool(_USER_NAME.fullmatch(name))


def valid_address_pattern(pattern: str) -> bool:
    """``user@example.com`` or ``*@example.com`` (lower-case domain without trailing dot)."""
    local, at, domain = pattern.rpartition("@")
    if not at or not _DOMAIN.fullmatch(domain.lower()):
        return False
    if local == "*":
        return True
    return bool(_LOCAL.fullmatch(local)) and ".." not in local and local.strip(".") == local


def parse_users(text: str, *, source: str = "users file") -> dict[str, User]:
    """The users in a file's text; raises :class:`UsersFileError` naming the line."""
    users: dict[str, User] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        where = f"{source}: line {number}"
        if len(fields) < 3:
            raise UsersFileError(f"{where}: expected 'name hash address...', got {len(fields)} field(s)")
        name, encoded, addresses = fields[0], fields[1], tuple(fields[2:])
        if not valid_user_name(name):
            raise UsersFileError(f"{where}: {name!r} is not a valid user name")
        if name in users:
            raise UsersFileError(f"{where}: user {name} appears twice")
        try:
            _decode_hash(encoded)
        except ValueError as exc:
            raise UsersFileError(f"{where}: user {name}: {exc}") from None
        for address in addresses:
            if not valid_address_pattern(address):
                raise UsersFileError(f"{where}: user {name}: {address!r} is not an address "
                                     "('user@example.com' or '*@example.com')")
        users[name] = User(name, encoded, addresses)
    return users


def format_users(users: Mapping[str, User]) -> str:
    lines = [HEADER]
    for user in sorted(users.values(), key=lambda u: u.name):
        lines.append(f"{user.name} {user.password_hash} {' '.join(user.addresses)}\n")
    return "".join(lines)


def load_users(path: str | os.PathLike[str]) -> dict[str, User]:
    """The users in a file; a missing file has none. Raises :class:`UsersFileError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(f"{p}: cannot read ({exc})") from None
    return parse_users(text, source=str(p))


def save_users(path: str | os.PathLike[str], users: Mapping[str, User]) -> None:
    """Writes the file atomically (a reader sees the old or the new file, never half), mode 0600:
    the hashes are not the passwords, but nobody else needs to see them."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(format_users(users))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the check the SMTP session runs ------------------------------------------------------

def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class Authenticator:
    """Checks logins against the users file. Thread-safe; :meth:`check` blocks (scrypt)."""

    CACHE_ENTRIES = 1024

    def __init__(self, path: str | os.PathLike[str], *, cache_seconds: float = 600,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.cache_seconds = cache_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, User] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._key = secrets.token_bytes(32)  # per process: cache keys mean nothing elsewhere
        # At start-up a broken file is an error the operator must see (the daemon does not start).
        self._users = load_users(self.path)
        self._stamp = _stamp(self.path)
        if self._stamp is None:
            log.warning("smtp_users_file_missing", path=str(self.path),
                        hint="nobody can log in until `faxbridge user add` creates it")

    def users(self) -> dict[str, User]:
        """The current users, re-read if the file changed. A file that became unreadable or
        broken means no users (fail closed) until it is fixed."""
        stamp = _stamp(self.path)
        with self._lock:
            if stamp == self._stamp:
                return self._users
            try:
                users = load_users(self.path)
            except UsersFileError as exc:
                log.error("smtp_users_file_broken", error=str(exc),
                          hint="nobody can log in until the file is fixed")
                users = {}
            self._users, self._stamp = users, stamp
            self._cache.clear()
            log.info("smtp_users_loaded", path=str(self.path), users=len(users))
            return users

    def user(self, name: str) -> User | None:
        return self.users().get(name)

    def _cache_key(self, name: str, encoded: str, secret: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (name.encode("utf-8", "replace"), encoded.encode("ascii", "replace"), secret):
            mac.update(len(part).to_bytes(4, "big") + part)  # length-prefixed: unambiguous
        return mac.digest()

    def check(self, login: bytes | str, password: bytes | str) -> User | None:
        """The user when (login, password) is right, else None. Blocking: ~30 ms of scrypt."""
        name = login if isinstance(login, str) else login.decode("utf-8", "replace")
        secret = password.encode("utf-8") if isinstance(password, str) else password
        user = self.users().get(name)
        encoded = user.password_hash if user else _dummy_hash()
        key = self._cache_key(name, encoded, secret)
        now = self.clock()
        with self._lock:
            expires = self._cache.get(key)
            if user is not None and expires is not None and expires > now:
                return user
        ok = verify_password(secret, encoded)
        if not ok or user is None:
            return None
        with self._lock:
            self._cache[key] = now + self.cache_seconds
            self._cache.move_to_end(key)
            while len(self._cache) > self.CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return user


def add_user(users: Mapping[str, User], name: str, password: str, addresses: Iterable[str], *,
             params: ScryptParams = DEFAULT_PARAMS) -> dict[str, User]:
    """A copy of ``users`` with ``name`` added or replaced. Raises ValueError for bad input."""
    addresses = tuple(addresses)
    if not valid_user_name(name):
        raise ValueError(f"{name!r} is not a valid user name (letters, digits and ._@+-)")
    if not password:
        raise ValueError("the password is empty")
    if not addresses:
        raise ValueError("a user needs at least one address to send as (--address)")
    for address in addresses:
        if not valid_address_pattern(address):
            raise ValueError(f"{address!r} is not an address ('user@example.com' or '*@example.com')")
    out = dict(users)
    out[name] = User(name, hash_password(password, params=params), addresses)
    return out
