"""Typed settings (pydantic-settings): one YAML file plus `APPLIANCE_*` environment variables,
which win, validated at start.

An environment variable names a field path with double underscores, for example
``APPLIANCE_LISTENER__PORT=11112`` or ``APPLIANCE_DATABASE__URL=postgresql+psycopg://...``; a
list or section is written as YAML, for example
``APPLIANCE_LISTENER__PEERS='[{ae_title: PACS, hosts: [10.20.0.0/16]}]'``. A bad value stops
start-up with a message that names the field.

Settings import `domain` only: every edge can be configured without pulling in another.
"""

import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from appliance.domain.accounts import LoginPolicy
from appliance.domain.assembly import CompletionPolicy
from appliance.domain.findings import SegmentationType
from appliance.domain.plausibility import Handling
from appliance.domain.policy import DuplicatePolicy
from appliance.domain.routing import Priority, RouteRule
from appliance.domain.uids import InvalidUid, parse_uid

ENV_PREFIX = "APPLIANCE_"
ENV_SEPARATOR = "__"
CONFIG_ENV = "APPLIANCE_CONFIG"

AeTitle = Annotated[
    str, Field(min_length=1, max_length=16, pattern=r"^[ -\[\]-~]*[^ ][ -\[\]-~]*$")
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PeerSettings(_Section):
    """A trusted sender (usually the PACS)."""

    ae_title: AeTitle = Field(description="Calling AE title of the sender.")
    hosts: list[str] = Field(
        default_factory=list,
        description="IP addresses or networks (CIDR) it may call from; empty means any.",
    )

    @field_validator("hosts")
    @classmethod
    def _networks(cls, hosts: list[str]) -> list[str]:
        for entry in hosts:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or network") from None
        return hosts

    complete_on_release: bool = Field(
        default=False,
        description="It sends each study whole on one association (as most PACS routing "
        "does): complete the study at the release when its series look whole, not after the "
        "quiet period; its results leave a settle after the release, unless an instance "
        "arriving meanwhile re-opens it.",
    )
    release_settle_seconds: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description="That settle, seconds after the release, before results may leave.",
    )


class TlsSettings(_Section):
    """DICOM TLS (PS3.15 Annex B, BCP 195 profile) on the listener."""

    enabled: bool = Field(default=False, description="Accept only TLS connections.")
    certificate: Path | None = Field(default=None, description="PEM server certificate chain.")
    private_key: Path | None = Field(default=None, description="PEM private key.")
    ca_certificates: Path | None = Field(
        default=None, description="PEM bundle of CAs that sign client certificates."
    )
    require_client_certificate: bool = Field(
        default=False, description="Mutual TLS: refuse clients without a trusted certificate."
    )

    @model_validator(mode="after")
    def _complete(self) -> "TlsSettings":
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("certificate and private_key are required when TLS is enabled")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("ca_certificates is required when client certificates are required")
        return self


class ListenerSettings(_Section):
    """The DICOM C-STORE/C-ECHO listener."""

    ae_title: AeTitle = Field(default="APPLIANCE", description="Called AE title the PACS uses.")
    host: str = Field(
        default="127.0.0.1",
        description="Address to listen on; 0.0.0.0 for every interface, as a PACS on another "
        "host needs.",
    )
    port: int = Field(default=11112, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    peers: list[PeerSettings] = Field(
        default_factory=lambda: [PeerSettings(ae_title="STORESCU", hosts=["127.0.0.1"])],
        description="Trusted senders. The default trusts dcmtk's storescu on this machine only.",
    )
    max_associations: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Concurrent associations accepted per process; only associations the "
        "policy accepted count, so strangers cannot take a trusted peer's place.",
    )
    max_connections_per_host: int = Field(
        default=16,
        ge=1,
        le=1000,
        description="Open connections one host may hold, counted before anything is read: a "
        "slow or hostile client cannot hold more.",
    )
    max_negotiating: int = Field(
        default=32,
        ge=1,
        le=10_000,
        description="Connections from hosts not known to be trusted that may be negotiating "
        "at once; when they run out, the one negotiating longest is cut off (a real sender's "
        "request takes milliseconds). With every peer's hosts listed, trusted hosts never "
        "wait on these and other hosts are refused at connect.",
    )
    max_instance_bytes: int = Field(
        default=2 << 30,
        ge=1 << 20,
        description="Largest data set taken, in bytes; a larger one is read to its end without "
        "being kept and refused (Out of Resources).",
    )
    associations_per_minute_per_host: int = Field(
        default=600,
        ge=0,
        description="New associations one host may open a minute, on average (per listener "
        "process); beyond it they are refused as transient (local limit exceeded) and the "
        "sender retries later. 0 for no limit.",
    )
    association_burst_per_host: int = Field(
        default=60, ge=1, description="New associations one host may open at once."
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Listener processes sharing the port (SO_REUSEPORT), for more throughput.",
    )
    duplicate_policy: DuplicatePolicy = Field(
        default=DuplicatePolicy.KEEP_FIRST,
        description="Handling of an already stored SOP Instance.",
    )
    acse_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a new connection has for its TLS handshake and association "
        "request together (the ARTIM timer), however slowly its bytes come.",
    )
    dimse_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds to wait for the next fragment of a DIMSE message under way; a "
        "message that stalls longer aborts the association.",
    )
    network_timeout: float = Field(
        default=60.0, gt=0, description="Seconds an association may idle between messages."
    )
    extra_sop_classes: list[str] = Field(
        default_factory=list,
        description="Storage SOP Class UIDs accepted beyond the built-in imaging, SEG and SR set.",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings)

    @field_validator("extra_sop_classes")
    @classmethod
    def _uids(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                parse_uid(value, "SOP Class UID")
            except InvalidUid as exc:
                raise ValueError(f"{value!r}: {exc}") from None
        return values


class SpoolSettings(_Section):
    """Durable storage of received instances."""

    path: Path = Field(default=Path("var/spool"), description="Spool directory.")
    disk_watermark_percent: float = Field(
        default=90.0,
        gt=0,
        le=100,
        description="Refuse instances (Out of Resources) while the disk is fuller than this.",
    )


class DatabaseSettings(_Section):
    """The audit and state database."""

    url: str = Field(
        default="sqlite:///var/appliance.db",
        description="SQLAlchemy URL: sqlite:///path or postgresql+psycopg://user@host/db.",
    )

    @field_validator("url")
    @classmethod
    def _supported(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("only sqlite and postgresql URLs are supported")
        return value


class StudySettings(_Section):
    """Study assembly."""

    quiet_period_seconds: float = Field(
        default=30.0, gt=0, description="A study is complete after this long without instances."
    )
    hint_settle_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Wait after count hints say every series is whole, for a further series.",
    )
    sweep_interval_seconds: float = Field(
        default=1.0, gt=0, description="How often the sweeper looks for complete studies."
    )

    def completion_policy(self, peers: Sequence["PeerSettings"] = ()) -> CompletionPolicy:
        """The policy; `peers`, the listener's, say who completes a study on release."""
        return CompletionPolicy(
            quiet_period=timedelta(seconds=self.quiet_period_seconds),
            hint_settle=timedelta(seconds=self.hint_settle_seconds),
            release_settle={
                peer.ae_title: timedelta(seconds=peer.release_settle_seconds)
                for peer in peers
                if peer.complete_on_release
            },
        )


class InferenceSettings(_Section):
    """Models and the backend that runs them."""

    repository: Path = Field(
        default=Path("model_repository"),
        description="Model repository: Triton's layout plus a contract.yaml per model.",
    )
    threads: int = Field(
        default=0, ge=0, le=256, description="ONNX Runtime threads per model; 0 lets it choose."
    )
    backend: Literal["onnxruntime", "triton"] = Field(
        default="onnxruntime",
        description="onnxruntime in the worker (embedded), or a Triton server (production).",
    )
    triton_url: str = Field(
        default="127.0.0.1:8001", description="Triton host:port (gRPC port for grpc)."
    )
    triton_protocol: Literal["grpc", "http"] = Field(
        default="grpc", description="How to talk to Triton."
    )
    low_confidence: Handling = Field(
        default=Handling.FLAG,
        description="A finding outside its model's plausible bounds, or from a series that "
        "does not state what the model's domain asks: flag (delivered, marked low "
        "confidence, for review) or withhold (not delivered; the report and the job's "
        "record say what was held back and why).",
    )


class RouteRuleSettings(_Section):
    """One routing rule; an empty condition matches anything, the first matching rule wins."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Name in job records.")
    pipeline: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="A pipeline of the model repository's catalog (`<name>.pipeline.yaml`).",
    )
    priority: Priority = Field(default=Priority.NORMAL, description="urgent or normal.")
    modalities: list[str] = Field(default_factory=list, description="e.g. [CT].")
    sop_classes: list[str] = Field(default_factory=list, description="SOP Class UIDs.")
    body_parts: list[str] = Field(default_factory=list, description="Body Part Examined values.")
    description_pattern: str | None = Field(
        default=None, description="Series description, shell pattern, case-insensitive."
    )
    calling_aes: list[str] = Field(default_factory=list, description="Senders' AE titles.")
    called_aes: list[str] = Field(default_factory=list, description="Called AE titles.")

    def rule(self) -> RouteRule:
        return RouteRule(
            name=self.name,
            pipeline=self.pipeline,
            priority=self.priority,
            modalities=frozenset(self.modalities),
            sop_classes=frozenset(self.sop_classes),
            body_parts=frozenset(self.body_parts),
            description_pattern=self.description_pattern,
            calling_aes=frozenset(self.calling_aes),
            called_aes=frozenset(self.called_aes),
        )


def _default_rules() -> list[RouteRuleSettings]:
    return [
        RouteRuleSettings(name="ct", pipeline="ct", modalities=["CT"]),
        RouteRuleSettings(
            name="ultrasound-cine", pipeline="us", sop_classes=["1.2.840.10008.5.1.4.1.1.3.1"]
        ),
    ]


class RoutingSettings(_Section):
    """Which pipeline runs on which series of a complete study."""

    rules: list[RouteRuleSettings] = Field(
        default_factory=_default_rules,
        description="In order; the default sends CT series to ct and US cines to us.",
    )

    def route_rules(self) -> list[RouteRule]:
        return [rule.rule() for rule in self.rules]


class QueueSettings(_Section):
    """The job queue: broker, leases and time limits."""

    broker_url: str = Field(
        default="sqla+sqlite:///var/broker.db",
        description="Celery broker: sqla+sqlite (embedded), redis:// or amqp://.",
    )
    lease_seconds: float = Field(
        default=900.0, gt=0, description="A running job not finished by then runs again."
    )
    time_limit_seconds: float = Field(
        default=1800.0, gt=0, description="Hard time limit of one job attempt."
    )
    redispatch_seconds: float = Field(
        default=300.0, gt=0, description="A queued job not picked up by then is sent again."
    )
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="Attempts before a job fails for good."
    )
    retry_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Wait before a job whose inference server was down runs again; doubles "
        "with each retry, up to an hour.",
    )
    worker_concurrency: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Jobs one worker runs at once, each in a process of its own. Above 1 they "
        "overlap all but their models (one job's models at a time on a host: the inference "
        "lane), so the job ahead is not slowed where the cores the models leave spare take "
        "the rest: set inference.threads to the cores less concurrency - 1.",
    )
    dispatch_window: int = Field(
        default=2,
        ge=1,
        le=10_000,
        description="Jobs handed to the workers at once (sent or running); the rest wait in "
        "the database in priority order. Set to the workers' total concurrency plus one each.",
    )
    promote_after_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A normal job waiting this long goes ahead as if urgent, so urgent studies "
        "never starve normal ones.",
    )


class ResultsSettings(_Section):
    """How results are encoded."""

    segmentation_type: SegmentationType = Field(
        default=SegmentationType.BINARY,
        description="binary (every receiver) or labelmap (Label Map SEG, RLE Lossless; newer "
        "receivers only).",
    )
    ultrasound_outlines: bool = Field(
        default=True,
        description="Beside an ultrasound SEG, send the cine with the outlines drawn (a "
        "multi-frame secondary capture every viewer displays).",
    )
    manufacturer: str = Field(
        default="Appliance project", max_length=64, description="Manufacturer in every result."
    )
    device_serial_number: str = Field(
        default="appliance-1",
        min_length=1,
        max_length=64,
        description="This installation's serial number in every result.",
    )


class DestinationKind(StrEnum):
    DIMSE = "dimse"
    STOW = "stow"


class DestinationSettings(_Section):
    """Where results go: a DICOM node (C-STORE) or a DICOMweb STOW-RS endpoint."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="Name in logs.")
    kind: DestinationKind = Field(default=DestinationKind.DIMSE, description="dimse or stow.")
    ae_title: AeTitle | None = Field(default=None, description="Called AE title (dimse).")
    host: str | None = Field(default=None, description="Host name or address (dimse).")
    port: int | None = Field(default=None, ge=1, le=65535, description="DICOM port (dimse).")
    url: str | None = Field(
        default=None, description="DICOMweb base URL, e.g. https://host/dicom-web (stow)."
    )
    username: str | None = Field(default=None, description="HTTP basic user (stow).")
    password: SecretStr | None = Field(default=None, description="HTTP basic password (stow).")
    tls: bool = Field(default=False, description="DICOM TLS to the node (dimse).")
    ca_certificates: Path | None = Field(
        default=None, description="PEM CAs to trust for TLS or HTTPS; the system's if unset."
    )
    certificate: Path | None = Field(default=None, description="PEM client certificate.")
    private_key: Path | None = Field(default=None, description="PEM client key.")
    timeout_seconds: float = Field(default=30.0, gt=0, description="Network timeout.")
    segmentation_type: SegmentationType | None = Field(
        default=None,
        description="The CT SEG form this destination accepts, with an SR that references "
        "it; results.segmentation_type if unset.",
    )

    @model_validator(mode="after")
    def _complete(self) -> "DestinationSettings":
        if self.kind is DestinationKind.DIMSE and not (self.ae_title and self.host and self.port):
            raise ValueError(f"destination {self.name}: dimse needs ae_title, host and port")
        if self.kind is DestinationKind.STOW and not self.url:
            raise ValueError(f"destination {self.name}: stow needs url")
        return self


class DeliverySettings(_Section):
    """Sending results back: the outbox, the destinations, and how long to keep trying."""

    outbox: Path = Field(default=Path("var/outbox"), description="Result files awaiting delivery.")
    calling_ae_title: AeTitle = Field(
        default="APPLIANCE", description="Calling AE title when sending results."
    )
    destinations: list[DestinationSettings] = Field(
        default_factory=list, description="Every result goes to each of them."
    )
    retry_initial_seconds: float = Field(
        default=10.0, gt=0, description="First wait after a failed attempt; doubles each time."
    )
    retry_max_seconds: float = Field(default=600.0, gt=0, description="Longest wait.")
    deadline_seconds: float = Field(
        default=86_400.0, gt=0, description="After this long, a result is a dead letter."
    )
    interval_seconds: float = Field(
        default=2.0, gt=0, description="How often due deliveries are attempted."
    )

    @field_validator("destinations")
    @classmethod
    def _unique(cls, destinations: list[DestinationSettings]) -> list[DestinationSettings]:
        names = [destination.name for destination in destinations]
        if len(set(names)) != len(names):
            raise ValueError("destination names must be unique")
        return destinations


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class DashboardSettings(_Section):
    """The ops dashboard, its JSON API and Prometheus metrics (one web server)."""

    enabled: bool = Field(default=True, description="serve runs the dashboard.")
    host: str = Field(default="127.0.0.1", description="Address the dashboard listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="Its TCP port.")
    session_hours: float = Field(default=12.0, gt=0, le=720, description="A login lasts this long.")
    session_idle_minutes: float = Field(
        default=30.0, gt=0, le=1440, description="A login left unused this long ends."
    )
    secure_cookies: bool = Field(
        default=False,
        description="Send the session cookie over HTTPS only; set it behind a TLS proxy.",
    )
    login_failures_per_account: int = Field(
        default=5,
        ge=1,
        description="Failed logins to one account name (known or not) that lock it for "
        "login_lockout_minutes.",
    )
    login_failures_per_host: int = Field(
        default=20,
        ge=1,
        description="Failed logins from one address that lock it for login_lockout_minutes.",
    )
    login_lockout_minutes: float = Field(
        default=15.0, gt=0, description="How long a locked name or address is refused."
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto "
        "are believed; from anyone else they are ignored.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "::1"],
        description="Host header values answered (the names the dashboard is reached by); "
        "any other is refused, against DNS rebinding. '*' allows all.",
    )
    max_request_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Largest request body taken (413 beyond)."
    )

    def login_policy(self) -> LoginPolicy:
        return LoginPolicy(
            lifetime=timedelta(hours=self.session_hours),
            idle=timedelta(minutes=self.session_idle_minutes),
            failures_per_account=self.login_failures_per_account,
            failures_per_host=self.login_failures_per_host,
            lockout=timedelta(minutes=self.login_lockout_minutes),
        )


class LoggingSettings(_Section):
    """Process logs on stderr. Patient attributes are never logged at any level."""

    level: str = Field(
        default="INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Lowest level logged."
    )
    format: LogFormat = Field(
        default=LogFormat.TEXT, description="text for people, json for log collectors."
    )


class AuditSettings(_Section):
    """Audit events sent to the hospital's audit repository (IHE ATNA: DICOM audit messages
    in RFC 5424 syslog over TLS, RFC 5425), besides the audit table."""

    syslog_host: str | None = Field(
        default=None, description="The audit repository's syslog collector; unset: none."
    )
    syslog_port: int = Field(default=6514, ge=1, le=65535, description="Its TLS syslog port.")
    ca_certificates: Path | None = Field(
        default=None, description="PEM CAs that sign the collector's certificate."
    )
    certificate: Path | None = Field(
        default=None, description="PEM client certificate, where the collector asks for one."
    )
    private_key: Path | None = Field(default=None, description="Its PEM private key.")
    source_id: str = Field(
        default="APPLIANCE", max_length=64, description="AuditSourceID the messages carry."
    )


MASK = "<masked>"
_URL_CREDENTIALS = re.compile(r"(\w[\w+.-]*://[^/\s:@]+:)[^@\s/]+@")


def mask_credentials(text: str) -> str:
    """`text` with the password of every URL in it (scheme://user:password@host) masked."""
    return _URL_CREDENTIALS.sub(rf"\1{MASK}@", text)


class SettingsError(Exception):
    """Settings could not be loaded; the message names every bad field."""


def _yaml(text: str, name: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"{name}: not valid YAML ({exc.__class__.__name__})") from exc


class _Environment(EnvSettingsSource):
    """`APPLIANCE_<SECTION>__<KEY>` variables of `environ`; lists and sections read as YAML."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env_vars = {name.lower(): value for name, value in environ.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        return _yaml(value, field_name)


class Settings(BaseSettings):
    """The whole settings tree."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_SEPARATOR,
        extra="forbid",
        frozen=True,
    )

    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    study: StudySettings = Field(default_factory=StudySettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    results: ResultsSettings = Field(default_factory=ResultsSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment wins over the values given (the settings file's); nothing else."""
        return (_Environment(settings_cls, os.environ), init_settings)

    def completion_policy(self) -> CompletionPolicy:
        """The study completion policy with the listener's peers' release settings."""
        return self.study.completion_policy(self.listener.peers)

    def destination_forms(self) -> dict[str, SegmentationType]:
        """The CT SEG form each destination gets."""
        default = self.results.segmentation_type
        return {d.name: d.segmentation_type or default for d in self.delivery.destinations}


def _unknown_sections(environ: Mapping[str, str]) -> list[str]:
    """`APPLIANCE_*` variables that name no section: a typo must not pass unnoticed."""
    sections = set(Settings.model_fields)
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX)
        and name.upper() != CONFIG_ENV
        and name[len(ENV_PREFIX) :].split(ENV_SEPARATOR)[0].lower() not in sections
    )


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(root)"
        lines.append(f"{where}: {item['msg']}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise SettingsError(f"{path}: the top level must be a mapping of sections")
    return loaded or {}


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings from `path` (or $APPLIANCE_CONFIG) and the environment (`environ`, by
    default the process's), the environment winning."""
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    tree = _read_file(path) if path is not None else {}
    unknown = _unknown_sections(environ)
    if unknown:
        raise SettingsError(f"{', '.join(unknown)}: no such settings section")
    sources = (_Environment(Settings, environ), InitSettingsSource(Settings, tree))
    try:
        return Settings(_build_sources=(sources, tree))  # type: ignore[call-arg]
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
