"""Dashboard accounts: roles and what each may do, password hashing, session and API tokens.

Passwords are kept as scrypt hashes with a salt of their own; session cookies and API tokens
are random secrets of which only a SHA-256 digest is stored, so a copy of the database opens
no account.
"""

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import IntEnum, StrEnum

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
    SESSION = "session"  # a login, in a cookie; expires
    TOKEN = "token"  # noqa: S105 - a kind of credential: an API token, lasts until revoked


@dataclass(frozen=True)
class User:
    """Who is asking: the account behind a valid session or token."""

    username: str
    role: Role

    def may(self, role: Role) -> bool:
        return self.role >= role


class WeakPassword(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${key.hex()}"


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
