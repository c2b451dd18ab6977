"""Dashboard accounts and their credentials (login sessions, API tokens), each change audited.

A login failure is audited with the name that was tried and nothing else: a mistyped password
never lands in the log. The audit trail is also what throttles guessing: failed logins are
counted from it per name and per source address (`LoginPolicy`).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from appliance.domain.accounts import (
    CredentialKind,
    LoginPolicy,
    LoginRefused,
    Role,
    Scope,
    User,
    digest,
    hash_password,
    new_secret,
    verify_password_or_decoy,
)
from appliance.domain.audit import AuditEventType, EventAction, EventOutcome
from appliance.store.audit_trail import record_event
from appliance.store.db import session_factory
from appliance.store.models import Account, AuditEvent, Credential

# A session's last use is written at most this often: not a database write per page.
_TOUCH_EVERY = timedelta(minutes=1)
_LOGIN_REFUSED = "dashboard login refused"


class AccountExists(ValueError):
    pass


class UnknownAccount(LookupError):
    pass


@dataclass(frozen=True)
class AccountRow:
    username: str
    role: Role
    disabled: bool
    created_at: datetime


@dataclass(frozen=True)
class TokenRow:
    id: int
    username: str
    name: str
    scope: Scope
    created_at: datetime
    expires_at: datetime | None
    revoked: bool


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
            self._changed(
                session,
                now,
                actor,
                f"password of {username} changed; its sessions and tokens revoked",
            )

    def login(
        self, username: str, password: str, now: datetime, policy: LoginPolicy, host: str | None
    ) -> str | LoginRefused:
        """A new session secret, or why not. A name or address over its failures is refused
        without its password being checked (the refusal that locks it is audited, the ones
        after are not: a flood does not fill the table); an unknown or disabled name costs
        what a known one does."""
        name = username[:64]
        with self._sessions.begin() as session:
            if self._locked(session, name, host, now, policy):
                return LoginRefused.LOCKED
            account = session.scalar(select(Account).where(Account.username == username))
            usable = account is not None and not account.disabled
            valid = verify_password_or_decoy(
                password, account.password_hash if account is not None and usable else None
            )
            detail = "dashboard login" if valid else _LOGIN_REFUSED
            if not valid and self._locked(session, name, host, now, policy, pending=1):
                minutes = policy.lockout.total_seconds() / 60
                detail += f"; further logins refused for {minutes:g} min: too many failures"
            record_event(
                session,
                AuditEventType.USER_LOGIN,
                occurred_at=now,
                actor=name,
                actor_host=host,
                action=EventAction.EXECUTE,
                outcome=EventOutcome.SUCCESS if valid else EventOutcome.MINOR_FAILURE,
                detail=detail,
            )
            if not valid or account is None:
                return LoginRefused.WRONG
            expires = now + policy.lifetime
            return self._issue(session, account, CredentialKind.SESSION, None, now, expires)

    @staticmethod
    def _locked(
        session: Session,
        name: str,
        host: str | None,
        now: datetime,
        policy: LoginPolicy,
        pending: int = 0,
    ) -> bool:
        """Whether failed logins (counting `pending` not yet written) reach the limit for the
        name, since its last success, or for the address, within the lockout window."""
        since = now - policy.lockout
        failed = (
            select(func.count(AuditEvent.id))
            .where(AuditEvent.event_type == AuditEventType.USER_LOGIN.value)
            .where(AuditEvent.outcome != EventOutcome.SUCCESS.value)
            .where(AuditEvent.occurred_at >= since)
        )
        succeeded = session.scalar(
            select(func.max(AuditEvent.occurred_at))
            .where(AuditEvent.event_type == AuditEventType.USER_LOGIN.value)
            .where(AuditEvent.outcome == EventOutcome.SUCCESS.value)
            .where(AuditEvent.actor == name)
        )
        by_name = failed.where(AuditEvent.actor == name)
        if succeeded is not None:
            by_name = by_name.where(AuditEvent.occurred_at > succeeded)
        if int(session.scalar(by_name) or 0) + pending >= policy.failures_per_account:
            return True
        if host is None:
            return False
        by_host = failed.where(AuditEvent.actor_host == host)
        return int(session.scalar(by_host) or 0) + pending >= policy.failures_per_host

    def create_token(
        self,
        username: str,
        name: str,
        now: datetime,
        actor: str,
        expires: datetime | None = None,
        scope: Scope = Scope.ALL,
    ) -> str:
        """A named API token for scripts and Prometheus, until `expires` or revoked; with
        `Scope.METRICS` it opens /metrics and nothing else."""
        until = f", expires {expires:%Y-%m-%d %H:%M} UTC" if expires else ", no expiry"
        with self._sessions.begin() as session:
            account = self._account(session, username)
            record_event(
                session,
                AuditEventType.ACCOUNT_CHANGED,
                occurred_at=now,
                actor=actor,
                detail=f"API token {name!r} created for {username} (scope {scope}{until})",
            )
            return self._issue(session, account, CredentialKind.TOKEN, name, now, expires, scope)

    def user(
        self, secret: str, kind: CredentialKind, now: datetime, idle: timedelta | None = None
    ) -> User | None:
        """The account a session cookie or token belongs to, while it is valid: not revoked,
        not expired, its account enabled, and (with `idle`) used within `idle`."""
        with self._sessions.begin() as session:
            found = session.execute(
                select(Credential, Account.username, Account.role)
                .join(Account, Account.id == Credential.account_id)
                .where(
                    Credential.digest == digest(secret),
                    Credential.kind == kind.value,
                    Credential.revoked.is_(False),
                    Account.disabled.is_(False),
                )
            ).first()
            if found is None:
                return None
            credential, username, role = found
            if credential.expires_at is not None and credential.expires_at <= now:
                return None
            last = credential.last_used_at or credential.created_at
            if idle is not None and now - last > idle:
                credential.revoked = True  # left idle: signed out
                return None
            if now - last >= _TOUCH_EVERY:
                credential.last_used_at = now
            return User(username, Role(role), Scope(credential.scope))

    def accounts(self) -> list[AccountRow]:
        with self._sessions() as session:
            return [
                AccountRow(a.username, Role(a.role), a.disabled, a.created_at)
                for a in session.scalars(select(Account).order_by(Account.username))
            ]

    def set_disabled(self, username: str, disabled: bool, now: datetime, actor: str) -> None:
        """Disable an account (its sessions and tokens stop working at once) or enable it."""
        with self._sessions.begin() as session:
            self._account(session, username).disabled = disabled
            self._changed(
                session, now, actor, f"account {username} {'disabled' if disabled else 'enabled'}"
            )

    def set_role(self, username: str, role: Role, now: datetime, actor: str) -> None:
        with self._sessions.begin() as session:
            account = self._account(session, username)
            before = Role(account.role)
            account.role = int(role)
            self._changed(
                session, now, actor, f"role of {username}: {before.label} -> {role.label}"
            )

    def delete(self, username: str, now: datetime, actor: str) -> None:
        """Delete an account with its sessions and tokens; the audit trail keeps its name."""
        with self._sessions.begin() as session:
            account = self._account(session, username)
            session.execute(delete(Credential).where(Credential.account_id == account.id))
            session.delete(account)
            self._changed(session, now, actor, f"account {username} deleted")

    def tokens(self) -> list[TokenRow]:
        with self._sessions() as session:
            rows = session.execute(
                select(Credential, Account.username)
                .join(Account, Account.id == Credential.account_id)
                .where(Credential.kind == CredentialKind.TOKEN.value)
                .order_by(Credential.id)
            ).all()
        return [
            TokenRow(c.id, username, c.name or "", Scope(c.scope), c.created_at, c.expires_at,
                     c.revoked)
            for c, username in rows
        ]  # fmt: skip

    def revoke_token(self, token_id: int, now: datetime, actor: str) -> None:
        with self._sessions.begin() as session:
            credential = session.get(Credential, token_id)
            if credential is None or credential.kind != CredentialKind.TOKEN.value:
                raise UnknownAccount(f"no API token {token_id}")
            credential.revoked = True
            account = session.get_one(Account, credential.account_id)
            self._changed(
                session, now, actor,
                f"API token {token_id} ({credential.name!r}) of {account.username} revoked",
            )  # fmt: skip

    @staticmethod
    def _changed(session: Session, now: datetime, actor: str, detail: str) -> None:
        record_event(
            session,
            AuditEventType.ACCOUNT_CHANGED,
            occurred_at=now,
            actor=actor,
            action=EventAction.UPDATE,
            detail=detail,
        )

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
        scope: Scope = Scope.ALL,
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
                scope=scope.value,
                last_used_at=now,
            )
        )
        return secret
