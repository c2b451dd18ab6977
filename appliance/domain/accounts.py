"""Dashboard accounts: roles and what each may do, password hashing, session and API tokens.

Passwords are kept as scrypt hashes with a salt of their own; session cookies and API tokens
are random secrets of which only a SHA-256 digest is stored, so a copy of the database opens
no account.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum, StrEnum
from functools import cache

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
MIN_PASSWORD_LENGTH = 12


class Role(IntEnum):
    """Each role may do everything the roles below it may."""

    VIEWER = 1  # sees flow, jobs and models, with patient identifiers masked
    OPERATOR = 2  # also acts on studies and jobs: complete, retry, cancel, re-send
    ADMIN = 3  # also reveals patient identifiers (accounts are managed at the console)

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Role":
        try:
            return cls[text.upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: viewer, operator or admin") from None


class CredentialKind(StrEnum):
    SESSION = "session"  # a login, in a cookie; expires, and ends when left idle
    TOKEN = "token"  # noqa: S105 - a kind of credential: an API token, until revoked or expired


class Scope(StrEnum):
    """What a credential may be used for, within its account's role."""

    ALL = "all"
    METRICS = "metrics"  # /metrics only: what a Prometheus scraper needs, nothing else


@dataclass(frozen=True)
class User:
    """Who is asking: the account behind a valid session or token."""

    username: str
    role: Role
    scope: Scope = Scope.ALL

    def may(self, role: Role) -> bool:
        return self.role >= role


@dataclass(frozen=True)
class LoginPolicy:
    """How long a login lasts, and how guessing is held back: failed logins counted per
    account name (known or not, so a lock tells nothing of which names exist) and per source
    address over `lockout`; at the limit, that name or address is refused for `lockout`."""

    lifetime: timedelta = timedelta(hours=12)
    idle: timedelta = timedelta(minutes=30)
    failures_per_account: int = 5
    failures_per_host: int = 20
    lockout: timedelta = timedelta(minutes=15)


class LoginRefused(StrEnum):
    WRONG = "wrong name or password"
    LOCKED = "too many failed logins"


class WeakPassword(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${key.hex()}"


@cache
def _decoy() -> str:
    """A hash no password opens, checked against when there is no account to check, so an
    unknown name costs what a wrong password does."""
    return hash_password(secrets.token_urlsafe(16))


def verify_password_or_decoy(password: str, stored: str | None) -> bool:
    """`verify_password` against `stored`, or at the same cost against a decoy (False)."""
    if stored is None:
        verify_password(password, _decoy())
        return False
    return verify_password(password, stored)


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, key = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), **_SCRYPT)
    return hmac.compare_digest(candidate.hex(), key)


def new_secret() -> str:
    """A session cookie or API token: 256 random bits."""
    return secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What the database keeps of a session cookie or API token."""
    return hashlib.sha256(secret.encode()).hexdigest()
