"""Dashboard accounts and their credentials (login sessions, API tokens), each change audited.

A login failure is audited with the name that was tried and nothing else: a mistyped password
never lands in the log.
"""

from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.domain.accounts import (
    CredentialKind,
    Role,
    User,
    digest,
    hash_password,
    new_secret,
    verify_password,
)
from appliance.domain.audit import AuditEventType, EventAction, EventOutcome
from appliance.store.audit_trail import record_event
from appliance.store.db import session_factory
from appliance.store.models import Account, Credential


class AccountExists(ValueError):
    pass


class UnknownAccount(LookupError):
    pass


class AccountLedger:
    def __init__(self, engine: Engine) -> None:
        self._sessions = session_factory(engine)

    def add(self, username: str, password: str, role: Role, now: datetime, actor: str) -> None:
        hashed = hash_password(password)
        try:
            with self._sessions.begin() as session:
                session.add(
                    Account(username=username, password_hash=hashed, role=int(role), created_at=now)
                )
                record_event(
                    session,
                    AuditEventType.ACCOUNT_CHANGED,
                    occurred_at=now,
                    actor=actor,
                    detail=f"account {username} created with role {role.label}",
                )
        except IntegrityError:
            raise AccountExists(f"account {username} exists already") from None

    def set_password(self, username: str, password: str, now: datetime, actor: str) -> None:
        """A new password; every session and token of the account is revoked with it."""
        hashed = hash_password(password)
        with self._sessions.begin() as session:
            account = self._account(session, username)
            account.password_hash = hashed
            session.execute(
                update(Credential).where(Credential.account_id == account.id).values(revoked=True)
            )
            record_event(
                session,
                AuditEventType.ACCOUNT_CHANGED,
                occurred_at=now,
                actor=actor,
                action=EventAction.UPDATE,
                detail=f"password of {username} changed; its sessions and tokens revoked",
            )

    def login(
        self, username: str, password: str, now: datetime, lifetime: timedelta, host: str | None
    ) -> str | None:
        """A new session secret, or None when the name or password is wrong."""
        with self._sessions.begin() as session:
            account = session.scalar(select(Account).where(Account.username == username))
            valid = (
                account is not None
                and not account.disabled
                and verify_password(password, account.password_hash)
            )
            record_event(
                session,
                AuditEventType.USER_LOGIN,
                occurred_at=now,
                actor=username[:64],
                actor_host=host,
                action=EventAction.EXECUTE,
                outcome=EventOutcome.SUCCESS if valid else EventOutcome.MINOR_FAILURE,
                detail="dashboard login" if valid else "dashboard login refused",
            )
            if not valid or account is None:
                return None
            return self._issue(session, account, CredentialKind.SESSION, None, now, now + lifetime)

    def create_token(self, username: str, name: str, now: datetime, actor: str) -> str:
        """A named API token for scripts and Prometheus; it lasts until revoked."""
        with self._sessions.begin() as session:
            account = self._account(session, username)
            record_event(
                session,
                AuditEventType.ACCOUNT_CHANGED,
                occurred_at=now,
                actor=actor,
                detail=f"API token {name!r} created for {username}",
            )
            return self._issue(session, account, CredentialKind.TOKEN, name, now, None)

    def user(self, secret: str, kind: CredentialKind, now: datetime) -> User | None:
        """The account a session cookie or token belongs to, while it is valid."""
        with self._sessions() as session:
            row = session.execute(
                select(Account.username, Account.role, Credential.expires_at)
                .join(Account, Account.id == Credential.account_id)
                .where(
                    Credential.digest == digest(secret),
                    Credential.kind == kind.value,
                    Credential.revoked.is_(False),
                    Account.disabled.is_(False),
                )
            ).first()
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            return None
        return User(row.username, Role(row.role))

    def logout(self, secret: str, now: datetime) -> None:
        with self._sessions.begin() as session:
            credential = session.scalar(
                select(Credential).where(Credential.digest == digest(secret))
            )
            if credential is None or credential.revoked:
                return
            credential.revoked = True
            account = session.get_one(Account, credential.account_id)
            record_event(
                session,
                AuditEventType.USER_LOGOUT,
                occurred_at=now,
                actor=account.username,
                action=EventAction.EXECUTE,
                detail="dashboard logout",
            )

    def count(self) -> int:
        with self._sessions() as session:
            return int(session.scalar(select(func.count(Account.id))) or 0)

    @staticmethod
    def _account(session: Session, username: str) -> Account:
        account = session.scalar(select(Account).where(Account.username == username))
        if account is None:
            raise UnknownAccount(f"no account {username}")
        return account

    @staticmethod
    def _issue(
        session: Session,
        account: Account,
        kind: CredentialKind,
        name: str | None,
        now: datetime,
        expires: datetime | None,
    ) -> str:
        secret = new_secret()
        session.add(
            Credential(
                kind=kind.value,
                name=name,
                digest=digest(secret),
                account_id=account.id,
                created_at=now,
                expires_at=expires,
                revoked=False,
            )
        )
        return secret
