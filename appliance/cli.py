"""The `appliance` command."""

import getpass
import json
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import yaml

from appliance.config import Settings, SettingsError, load_settings, mask_credentials

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from appliance.app.catalog import Governor
    from appliance.app.delivery import Deliverer
    from appliance.app.processes import Roles
    from appliance.domain.pipelines import State
    from appliance.inference.contract import ModelContract
    from appliance.store.account_ledger import AccountLedger
    from appliance.store.study_ledger import StudyLedger

EXIT_BAD_SETTINGS = 2
EXIT_NOT_FOUND = 3
EXIT_REFUSED = 4


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


def _study_service(ctx: click.Context) -> "StudyLedger":
    from appliance.store.db import open_database
    from appliance.store.study_ledger import StudyLedger

    settings = _settings(ctx)
    return StudyLedger(
        open_database(settings.database.url, migrate=False), settings.completion_policy()
    )


def _deliverer(ctx: click.Context) -> "Deliverer":
    from appliance.app.delivery import Deliverer
    from appliance.store.db import open_database

    settings = _settings(ctx)
    return Deliverer(settings.delivery, open_database(settings.database.url, migrate=False))


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


@click.group()
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Settings YAML file (default: $APPLIANCE_CONFIG, else built-in defaults).",
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """DICOM-native clinical inference appliance."""
    try:
        ctx.obj = load_settings(config_path)
    except SettingsError as exc:
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)


def _run(ctx: click.Context, roles: "Roles") -> None:
    from appliance.app.processes import run
    from appliance.store.db import SchemaNotCurrent

    try:
        run(_settings(ctx), roles)
    except SchemaNotCurrent as exc:
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)
    except OSError as exc:
        click.echo(f"appliance: cannot start: {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)


@main.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run every role on the configured (by default embedded) services: listener, sweeper and
    dashboard in this process, a worker beside it."""
    from appliance.app.processes import Roles

    dashboard = _settings(ctx).dashboard.enabled
    _run(ctx, Roles(listen=True, sweep=True, work=True, dashboard=dashboard, migrate=True))


@main.command()
@click.pass_context
def dashboard(ctx: click.Context) -> None:
    """Run the ops dashboard, its JSON API and /metrics only (the schema must be current)."""
    from appliance.app.processes import Roles

    _run(ctx, Roles(dashboard=True))


@main.command()
@click.pass_context
def listen(ctx: click.Context) -> None:
    """Run the DICOM listener only (the schema must be current)."""
    from appliance.app.processes import Roles

    _run(ctx, Roles(listen=True))


@main.command()
@click.pass_context
def sweep(ctx: click.Context) -> None:
    """Run the sweeper only: complete quiet studies, dispatch jobs, deliver results."""
    from appliance.app.processes import Roles

    _run(ctx, Roles(sweep=True))


@main.command()
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a job worker (Celery) on the configured broker: pipelines, encoding, the gate."""
    from appliance.app.processes import run_worker

    run_worker(_settings(ctx))


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply pending migrations (idempotent)."""
    from appliance.store.db import create_db_engine, upgrade

    upgrade(create_db_engine(_settings(ctx).database.url))
    click.echo("database schema is current")


@main.group()
def users() -> None:
    """Dashboard accounts and API tokens."""


def _accounts(ctx: click.Context) -> "AccountLedger":
    from appliance.store.account_ledger import AccountLedger
    from appliance.store.db import open_database

    return AccountLedger(open_database(_settings(ctx).database.url, migrate=False))


def _console() -> str:
    """Who acted, in the audit trail, for a command run at the console."""
    return f"console:{getpass.getuser()}"


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


@users.command("add")
@click.argument("username")
@click.option("--role", default="viewer", show_default=True, help="viewer, operator or admin.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def users_add(ctx: click.Context, username: str, role: str, password_stdin: bool) -> None:
    """Add a local account (the password is asked for, or read from stdin)."""
    from appliance.domain.accounts import Role

    try:
        parsed = Role.parse(role)
        _accounts(ctx).add(
            username, _password(password_stdin), parsed, datetime.now(UTC), _console()
        )
    except ValueError as exc:  # an unknown role, a weak password, a taken name
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)
    click.echo(f"account {username} added as {parsed.label}")


@users.command("password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_context
def users_password(ctx: click.Context, username: str, password_stdin: bool) -> None:
    """Set a new password; the account's sessions and tokens stop working."""
    from appliance.domain.accounts import WeakPassword
    from appliance.store.account_ledger import UnknownAccount

    try:
        _accounts(ctx).set_password(
            username, _password(password_stdin), datetime.now(UTC), _console()
        )
    except (WeakPassword, UnknownAccount) as exc:
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)
    click.echo(f"password of {username} changed")


@users.command("token")
@click.argument("username")
@click.option("--name", required=True, help="What the token is for, e.g. prometheus.")
@click.option(
    "--scope",
    type=click.Choice(["all", "metrics"]),
    default="all",
    show_default=True,
    help="metrics: the token opens /metrics only (for Prometheus).",
)
@click.option(
    "--expires-days",
    type=click.IntRange(1, 3650),
    default=None,
    help="Days until the token stops working (default: until revoked).",
)
@click.pass_context
def users_token(
    ctx: click.Context, username: str, name: str, scope: str, expires_days: int | None
) -> None:
    """Create an API token acting as USERNAME (for scripts and Prometheus); printed once."""
    from appliance.domain.accounts import Scope

    now = datetime.now(UTC)
    expires = now + timedelta(days=expires_days) if expires_days else None
    token = _account_change(
        lambda ledger: ledger.create_token(username, name, now, _console(), expires, Scope(scope))
    )
    click.echo(token)


@users.command("list")
@click.pass_context
def users_list(ctx: click.Context) -> None:
    """Accounts with their roles, and whether each is disabled."""
    for row in _accounts(ctx).accounts():
        state = "disabled" if row.disabled else "enabled"
        click.echo(f"{row.username}\t{row.role.label}\t{state}\tcreated {row.created_at:%Y-%m-%d}")


def _switch(disabled: bool, help_text: str) -> None:
    """`users disable` and `users enable`: one account's switch, either way."""
    word = "disabled" if disabled else "enabled"

    @users.command(word.removesuffix("d"), help=help_text)
    @click.argument("username")
    def command(username: str) -> None:
        _account_change(
            lambda ledger: ledger.set_disabled(username, disabled, datetime.now(UTC), _console())
        )
        click.echo(f"account {username} {word}")


_switch(True, "Disable an account: its sessions and tokens stop working at once.")
_switch(False, "Enable a disabled account again.")


@users.command("role")
@click.argument("username")
@click.argument("role")
@click.pass_context
def users_role(ctx: click.Context, username: str, role: str) -> None:
    """Give an account another role (viewer, operator or admin)."""
    from appliance.domain.accounts import Role

    _account_change(
        lambda ledger: ledger.set_role(username, Role.parse(role), datetime.now(UTC), _console())
    )
    click.echo(f"account {username} is now {role.lower()}")


@users.command("delete")
@click.argument("username")
@click.pass_context
def users_delete(ctx: click.Context, username: str) -> None:
    """Delete an account with its sessions and tokens (the audit trail keeps its name)."""
    _account_change(lambda ledger: ledger.delete(username, datetime.now(UTC), _console()))
    click.echo(f"account {username} deleted")


@users.command("tokens")
@click.pass_context
def users_tokens(ctx: click.Context) -> None:
    """API tokens: number, account, name, scope, expiry and whether revoked."""
    for row in _accounts(ctx).tokens():
        expiry = f"expires {row.expires_at:%Y-%m-%d}" if row.expires_at else "no expiry"
        state = "revoked" if row.revoked else "active"
        click.echo(f"{row.id}\t{row.username}\t{row.name}\t{row.scope}\t{expiry}\t{state}")


@users.command("revoke-token")
@click.argument("token_id", type=int)
@click.pass_context
def users_revoke_token(ctx: click.Context, token_id: int) -> None:
    """Revoke one API token (its number from `users tokens`)."""
    _account_change(lambda ledger: ledger.revoke_token(token_id, datetime.now(UTC), _console()))
    click.echo(f"API token {token_id} revoked")


def _account_change(change: "Callable[[AccountLedger], T]") -> T:
    """Run an account change; an unknown account or role ends the command with its reason."""
    from appliance.store.account_ledger import UnknownAccount

    try:
        return change(_accounts(click.get_current_context()))
    except (UnknownAccount, ValueError) as exc:
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)


@main.group()
def studies() -> None:
    """Inspect and act on studies."""


@studies.command("list")
@click.option("--state", type=click.Choice(["receiving", "complete"]), default=None)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def studies_list(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """Most recently active studies first."""
    from appliance.domain.assembly import StudyState

    service = _study_service(ctx)
    rows = service.list_studies(limit, StudyState(state) if state else None)
    if as_json:
        _print_json([asdict(row) for row in rows])
        return
    click.echo(
        f"{'ID':>5}  {'STATE':<10} {'VER':>3} {'SERIES':>6} {'INST':>6}  "
        f"{'LAST RECEIVED (UTC)':<19}  STUDY INSTANCE UID"
    )
    for row in rows:
        click.echo(
            f"{row.id:>5}  {row.state:<10} {row.version:>3} {row.series_count:>6} "
            f"{row.instance_count:>6}  {row.last_received_at:%Y-%m-%d %H:%M:%S}  "
            f"{row.study_instance_uid}"
        )


@studies.command("show")
@click.argument("study_instance_uid")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def studies_show(ctx: click.Context, study_instance_uid: str, as_json: bool) -> None:
    """One study with its series and jobs."""
    from appliance.domain.assembly import UnknownStudy

    service = _study_service(ctx)
    try:
        detail = service.show(study_instance_uid)
    except UnknownStudy:
        click.echo(f"no study {study_instance_uid}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    if as_json:
        _print_json(asdict(detail))
        return
    study = detail.study
    click.echo(f"study {study.study_instance_uid} (id {study.id})")
    click.echo(
        f"  state {study.state}, version {study.version}, "
        f"{study.instance_count} instances from {study.calling_ae}"
    )
    if study.completed_at:
        click.echo(
            f"  completed {study.completed_at:%Y-%m-%d %H:%M:%S} ({study.completion_reason})"
        )
    elif study.complete_after:
        click.echo(f"  complete after {study.complete_after:%Y-%m-%d %H:%M:%S} unless more arrive")
    for series in detail.series:
        expected = f"/{series.expected_instances}" if series.expected_instances else ""
        click.echo(
            f"  series {series.series_number or '-'} {series.modality or '?'} "
            f"{series.received_instances}{expected}  {series.series_description or ''}"
        )
    for job in detail.jobs:
        click.echo(f"  job {job.id} version {job.study_version}: {job.state}")
        if job.reason:
            click.echo(f"    {job.reason}")


@studies.command("force-complete")
@click.argument("study_instance_uid")
@click.option("--operator", default="cli", show_default=True, help="Who is acting, for the audit.")
@click.pass_context
def studies_force_complete(ctx: click.Context, study_instance_uid: str, operator: str) -> None:
    """Complete a receiving study now and queue its job."""
    from appliance.domain.assembly import UnknownStudy

    service = _study_service(ctx)
    try:
        done = service.force_complete(study_instance_uid, datetime.now(UTC), f"operator:{operator}")
    except UnknownStudy:
        click.echo(f"no study {study_instance_uid}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except ValueError as exc:
        click.echo(f"not completed: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    click.echo(f"study {done.study_id} version {done.version} complete: job {done.job_id} queued")


@main.group()
def spool() -> None:
    """The spool of received instances."""


@spool.command("verify")
@click.option("--no-hashes", is_flag=True, help="Only check that files exist (faster).")
@click.pass_context
def spool_verify(ctx: click.Context, no_hashes: bool) -> None:
    """Check every recorded instance's file and hash, and find files with no record."""
    from appliance.app.integrity import verify_spool
    from appliance.store.db import open_database

    settings = _settings(ctx)
    report = verify_spool(
        open_database(settings.database.url, migrate=False),
        settings.spool.path,
        datetime.now(UTC),
        hashes=not no_hashes,
    )
    click.echo(
        f"{report.checked} instances checked: {len(report.missing)} missing, "
        f"{len(report.corrupted)} corrupted, {len(report.orphans)} orphan files"
    )
    for kind, paths in (
        ("missing", report.missing),
        ("corrupted", report.corrupted),
        ("orphan", report.orphans),
    ):
        for path in paths:
            click.echo(f"  {kind}: {path}")
    if not report.healthy:
        sys.exit(EXIT_REFUSED)


@main.group()
def models() -> None:
    """The model repository."""


def _governor(ctx: click.Context) -> "Governor":
    from appliance.app.catalog import Governor
    from appliance.store.db import SchemaNotCurrent, open_database

    settings = _settings(ctx)
    try:
        engine = open_database(settings.database.url, False)
    except SchemaNotCurrent as exc:
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)
    return Governor(settings.inference.repository, engine)


@models.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    """Every model version: modality, where it came from, its state and its labels."""
    for model in _governor(ctx).models():
        if model.error:
            click.echo(f"invalid: {model.error}")
            continue
        flag = "  (synthetic training data; not for clinical use)" if model.synthetic else ""
        click.echo(
            f"{model.name} v{model.version} [{model.modality}, {model.source}] {model.state}: "
            f"{', '.join(model.labels)}{flag}"
        )


def _set_state(ctx: click.Context, change: "Callable[[Governor], object]", what: str) -> None:
    from appliance.app.catalog import NotInCatalog

    try:
        was = change(_governor(ctx))
    except NotInCatalog as exc:
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    click.echo(f"{what} (was {was})")


def _model_state_command(state: "State") -> click.Command:
    @click.argument("name")
    @click.option("--version", type=click.IntRange(1), required=True, help="The version.")
    @click.pass_context
    def command(ctx: click.Context, name: str, version: int) -> None:
        from appliance.domain.pipelines import ModelRef

        model = ModelRef(name, version)
        _set_state(
            ctx, lambda governor: governor.set_model(model, state, _console()).value,
            f"model {model} {state.value}",
        )  # fmt: skip

    command.__doc__ = f"Make a model version {state.value} (audited)."
    return click.command(state.verb)(command)


def _pipeline_state_command(state: "State") -> click.Command:
    @click.argument("name")
    @click.pass_context
    def command(ctx: click.Context, name: str) -> None:
        _set_state(
            ctx, lambda governor: governor.set_pipeline(name, state, _console()).value,
            f"pipeline {name} {state.value}",
        )  # fmt: skip

    command.__doc__ = f"Make a pipeline {state.value} (audited)."
    return click.command(state.verb)(command)


@models.group("import")
def models_import() -> None:
    """Import a published model as a new model version (needs the `importers` extra)."""


def _folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of fold numbers like 0,1") from None


def _importer_venv() -> Path | None:
    """The venv beside this one that holds PyTorch and nnunetv2 (scripts/test makes it)."""
    candidate = Path(sys.prefix).parent / ".venv-nnunet" / "bin" / "appliance"
    return candidate if candidate.exists() and Path(sys.prefix) != candidate.parents[1] else None


_STATE_OPTION = click.option(
    "--state",
    type=click.Choice(["shadow", "enabled", "disabled"]),
    default="shadow",
    show_default=True,
    help="Its state once imported: shadow runs it without delivering.",
)


@models_import.command("nnunet")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--name", required=True, help="The model's name in the repository.")
@click.option("--version", type=click.IntRange(1), help="Default: the next free version.")
@click.option("--folds", help="Comma-separated folds to average (default: every fold found).")
@click.option(
    "--codes",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="CSV of name,category,type[,modifier]; codes as SCHEME:VALUE:Meaning.",
)
@click.option("--modality", help="The modality it reads (default CT for a CT channel).")
@click.option("--step", type=click.FloatRange(0.1, 1.0), default=0.5, show_default=True)
@click.option("--no-mirroring", is_flag=True, help="No test-time mirroring (faster).")
@click.option(
    "--postprocessing",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="nnU-Net's postprocessing.json to apply (largest components).",
)
@click.option("--synthetic", is_flag=True, help="Trained on synthetic data: flag its findings.")
@_STATE_OPTION
@click.pass_context
def models_import_nnunet(
    ctx: click.Context,
    folder: Path,
    name: str,
    version: int | None,
    folds: str | None,
    codes: Path,
    modality: str | None,
    step: float,
    no_mirroring: bool,
    postprocessing: Path | None,
    synthetic: bool,
    state: str,
) -> None:
    """Import an nnU-Net v2 result folder (TRAINER__PLANS__CONFIGURATION). Its checkpoints
    are pickles: import only folders whose origin you trust."""
    from appliance.inference.nnunet_import import import_nnunet, read_codes

    export_network = _exporter("appliance.inference.nnunet_export", "export_network")
    settings = _settings(ctx)
    governor = _governor(ctx)  # the import is audited: no import without the database
    with _refusals():
        contract = import_nnunet(
            folder, settings.inference.repository, name, read_codes(codes), export_network,
            version=version, folds=_folds(folds), modality=modality, synthetic=synthetic,
            step=step, mirroring=not no_mirroring, postprocessing=postprocessing,
        )  # fmt: skip
    _imported(governor, contract, state, f"nnU-Net v2 folder {folder.name}")


def _exporter(module: str, function: str) -> "Callable[..., Any]":
    """An importer's PyTorch half; without PyTorch here, the command re-runs in the importers
    venv beside this one, or stops saying what to install."""
    import importlib

    try:
        exporter: Callable[..., Any] = getattr(importlib.import_module(module), function)
    except ImportError:
        elsewhere = _importer_venv()
        if elsewhere is None:
            click.echo(
                "appliance: importing needs PyTorch: install the importers extra "
                "(pip install -e '.[importers]') into a venv of its own and run it from there",
                err=True,
            )
            sys.exit(EXIT_REFUSED)
        sys.exit(subprocess.run([str(elsewhere), *sys.argv[1:]], check=False).returncode)
    return exporter


@contextmanager
def _refusals() -> "Iterator[None]":
    """An import that cannot be done stops with its reason; the repository is untouched."""
    from appliance.inference.contract import ContractError
    from appliance.inference.importing import ImportRefused

    try:
        yield
    except (ImportRefused, ContractError) as exc:
        click.echo(f"appliance: import refused: {exc}", err=True)
        sys.exit(EXIT_REFUSED)


def _imported(governor: "Governor", contract: "ModelContract", state: str, origin: str) -> None:
    """Audit the new version in its first state and say what was added."""
    from appliance.domain.pipelines import State

    governor.record_import(contract.ref, State(state), origin, _console())
    click.echo(
        f"imported {contract.ref} ({state}): {', '.join(label.name for label in contract.labels)}"
    )


@models_import.command("totalsegmentator")
@click.argument("weights", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--task",
    default="total",
    show_default=True,
    help="A TotalSegmentator task: total (five parts at 1.5 mm), total_fast (one at 3 mm), ...",
)
@click.option("--name", help="The models' name stem (default totalsegmentator_TASK).")
@_STATE_OPTION
@click.pass_context
def models_import_totalsegmentator(
    ctx: click.Context, weights: Path, task: str, name: str | None, state: str
) -> None:
    """Import a TotalSegmentator task from its weights folder (where its weights were
    unpacked: the Dataset... folders), with its recipe and one pipeline. Its checkpoints are
    pickles: import only weights whose origin you trust; some tasks carry their own licence."""
    from appliance.inference.totalsegmentator_import import import_totalsegmentator

    export_network = _exporter("appliance.inference.nnunet_export", "export_network")
    settings = _settings(ctx)
    governor = _governor(ctx)
    with _refusals():
        contracts, pipeline = import_totalsegmentator(
            weights, settings.inference.repository, task, export_network, name=name
        )
    for contract in contracts:
        _imported(governor, contract, state, f"TotalSegmentator {task} ({weights.name})")
    click.echo(f"pipeline {pipeline.name.removesuffix('.pipeline.yaml')}")


@models_import.command("torchscript")
@click.argument("source", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--contract",
    "template",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="The model's contract without its version: tensors, recipe, coded labels.",
)
@click.option("--name", help="The model's name (default: the template's).")
@click.option("--version", type=click.IntRange(1), help="Default: the next free version.")
@click.option(
    "--notes",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Markdown for its model card: origin, intended use, validation.",
)
@click.option("--no-pipeline", is_flag=True, help="Declare no pipeline of its own.")
@_STATE_OPTION
@click.pass_context
def models_import_torchscript(
    ctx: click.Context,
    source: Path,
    template: Path,
    name: str | None,
    version: int | None,
    notes: Path | None,
    no_pipeline: bool,
    state: str,
) -> None:
    """Import a TorchScript archive by a contract template. Loading it runs its TorchScript
    code: import only files whose origin you trust."""
    from appliance.inference.torchscript_import import import_torchscript

    export = _exporter("appliance.inference.onnx_export", "export_torchscript")
    settings = _settings(ctx)
    governor = _governor(ctx)
    with _refusals():
        contract = import_torchscript(
            source, settings.inference.repository, template, export, name=name,
            version=version, notes=notes.read_text(encoding="utf-8") if notes else "",
            pipeline=not no_pipeline,
        )  # fmt: skip
    _imported(governor, contract, state, f"TorchScript file {source.name}")


@models_import.command("deepbet")
@_STATE_OPTION
@click.pass_context
def models_import_deepbet(ctx: click.Context, state: str) -> None:
    """Import deepbet (T1 MR brain extraction) from its installed package: its locator and
    brain models, and the `deepbet` pipeline."""
    from appliance.inference.torchscript_import import import_deepbet

    export = _exporter("appliance.inference.onnx_export", "export_torchscript")
    settings = _settings(ctx)
    governor = _governor(ctx)
    with _refusals():
        locator, brain = import_deepbet(settings.inference.repository, export)
    _imported(governor, locator, state, "the deepbet package (bbox_model.pt)")
    _imported(governor, brain, state, "the deepbet package (model.pt)")


@models.command("check")
@click.pass_context
def models_check(ctx: click.Context) -> None:
    """Validate every model: contract, ONNX checker, TensorRT operators, tensors, config."""
    from appliance.inference.repository import check_model, model_directories

    repository = _settings(ctx).inference.repository
    directories = model_directories(repository) if repository.is_dir() else []
    if not directories:
        click.echo(f"no models in {repository}", err=True)
        sys.exit(EXIT_NOT_FOUND)
    failed = 0
    for directory in directories:
        problems = check_model(directory)
        failed += bool(problems)
        click.echo(f"{directory.name}: {'ok' if not problems else 'FAILED'}")
        for problem in problems:
            click.echo(f"  - {problem}")
    if failed:
        sys.exit(EXIT_REFUSED)


def _output_folder(help: str) -> "Callable[[Callable[..., Any]], Callable[..., Any]]":
    """The `--output FOLDER` option a command writes into."""
    return click.option(
        "--output", type=click.Path(path_type=Path, file_okay=False), required=True, help=help
    )


@models.command("probes")
@click.argument("pipeline")
@click.argument("series", type=click.Path(path_type=Path, exists=True))
@_output_folder("Where to write MODEL.VERSION.npy for each model the pipeline runs.")
@click.option("--keep", type=click.IntRange(1, 64), default=8, show_default=True)
@click.pass_context
def models_probes(ctx: click.Context, pipeline: str, series: Path, output: Path, keep: int) -> None:
    """Run PIPELINE on SERIES (a folder of one series' files, or a cine's file) with ONNX
    Runtime and keep up to KEEP of the inputs each model reads, spread over the run: the
    probes `build-trt --probes` holds FP16 engines to. They are image data: keep them on
    the host."""
    import numpy as np

    from appliance.app.pipelines import run_frames, run_volume
    from appliance.inference.backend import OnnxRuntimeBackend, RecordingBackend
    from appliance.inference.catalog import load_catalog
    from appliance.inference.ct import UnsupportedSeries

    settings = _settings(ctx).inference
    catalog = load_catalog(settings.repository)
    if pipeline not in catalog.pipelines:
        click.echo(f"appliance: no pipeline {pipeline!r} in {settings.repository}", err=True)
        sys.exit(EXIT_REFUSED)
    chosen = catalog.pipelines[pipeline]
    backend = RecordingBackend(OnnxRuntimeBackend(settings.repository, settings.threads), keep)
    try:
        if chosen.frames:
            run_frames(chosen, catalog, series, backend)
        else:
            run_volume(chosen, catalog, sorted(p for p in series.iterdir() if p.is_file()), backend)
    except (UnsupportedSeries, OSError, ValueError) as exc:
        click.echo(f"appliance: {pipeline} cannot read {series}: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    output.mkdir(parents=True, exist_ok=True)
    for model, inputs in sorted(backend.inputs.items()):
        np.save(output / f"{model.name}.{model.version}.npy", np.stack(inputs))
        click.echo(f"{model.name} v{model.version}: {len(inputs)} inputs")


@models.command("build-trt")
@_output_folder("Where to write the TensorRT model repository.")
@click.option("--max-batch", type=click.IntRange(1, 256), default=8, show_default=True)
@click.option("--fp32", is_flag=True, help="Build FP32 engines instead of FP16.")
@click.option(
    "--probes",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="MODEL.npy (or MODEL.VERSION.npy) inputs, each as the model reads them: an FP16 "
    "engine is kept only where its labels on them agree with FP32 (Dice >= 0.99 per class).",
)
@click.pass_context
def models_build_trt(
    ctx: click.Context, output: Path, max_batch: int, fp32: bool, probes: Path | None
) -> None:
    """Build TensorRT engines (on the GPU host) and their tensorrt_plan configs."""
    from appliance.inference.tensorrt import (
        EngineBuildFailed,
        ProbeUnusable,
        TensorRTUnavailable,
        build_tensorrt_repository,
    )

    try:
        built = build_tensorrt_repository(
            _settings(ctx).inference.repository, output, max_batch, not fp32, probes
        )
    except (TensorRTUnavailable, EngineBuildFailed, ProbeUnusable) as exc:
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    for parity in built:
        click.echo(f"{parity.model} v{parity.version}: {parity.precision} ({parity.reason})")
    click.echo(f"written to {output}")


@main.group()
def pipelines() -> None:
    """Pipelines declared in the model repository (`<name>.pipeline.yaml`)."""


@pipelines.command("list")
@click.pass_context
def pipelines_list(ctx: click.Context) -> None:
    """Every pipeline: its state, the state it runs in, its stages."""
    for pipeline in _governor(ctx).pipelines():
        runs = "" if pipeline.effective == pipeline.state else f", runs {pipeline.effective}"
        click.echo(f"{pipeline.name} {pipeline.state}{runs}: {pipeline.description}")
        for stage in pipeline.stages:
            click.echo(f"  {stage}")


def _add_state_commands() -> None:
    from appliance.domain.pipelines import State

    for state in State:
        models.add_command(_model_state_command(state))
        pipelines.add_command(_pipeline_state_command(state))


@main.group()
def rules() -> None:
    """Routing rules."""


@rules.command("dry-run")
@click.option("--since", default="7d", show_default=True, help="A period: 36h, 7d, 2w.")
@click.option(
    "--rules",
    "rules_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="Candidate rules (YAML); without it the current rules are replayed against themselves.",
)
@click.pass_context
def rules_dry_run(ctx: click.Context, since: str, rules_file: Path | None) -> None:
    """Replay routing of the studies received in a period with the current and the candidate
    rules, under the pipelines' present states; print what would change. Changes nothing."""
    from appliance.app.rules import dry_run, load_rules
    from appliance.store.db import open_database

    settings = _settings(ctx)
    try:
        period = _period(since)
        candidate = load_rules(rules_file) if rules_file else settings.routing.route_rules()
    except (ValueError, SettingsError) as exc:
        click.echo(f"appliance: {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)
    engine = open_database(settings.database.url, migrate=False)
    start = datetime.now(UTC) - period
    result = dry_run(engine, _governor(ctx), settings.routing.route_rules(), candidate, start)
    click.echo(
        f"{result.studies} studies ({result.series} series) received since "
        f"{start:%Y-%m-%d %H:%M} UTC; {len(result.changes)} series would change"
    )
    for change in result.changes:
        click.echo(
            f"  {change.study_instance_uid} {change.series_instance_uid} {change.modality}: "
            f"{change.now} -> {change.candidate}"
        )


def _period(text: str) -> "timedelta":
    """`36h`, `7d`, `2w` as a timedelta; ValueError otherwise."""
    from datetime import timedelta

    units = {"h": "hours", "d": "days", "w": "weeks"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise ValueError(f"--since {text!r}: a number of hours, days or weeks, like 7d")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


# What the committed models were trained for (each one's card says how).
TRAINING_STEPS = {"us_frame": 800, "organ_ct": 4200, "lesion_ct": 12_000}


@main.command()
@click.argument("model", type=click.Choice(sorted(TRAINING_STEPS)))
@click.option(
    "--steps",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Training steps (default: the model's reference count).",
)
@click.option("--seed", type=int, default=20261124, show_default=True)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="3D models: resume from and save to this file (default checkpoints/MODEL.pt).",
)
@click.pass_context
def train(
    ctx: click.Context, model: str, steps: int | None, seed: int, checkpoint: Path | None
) -> None:
    """Train a reference model on phantoms (needs the `train` extra: torch)."""
    try:
        from appliance.training import lesion_ct, organ_ct, us_frame
    except ImportError as exc:
        click.echo(f"training needs the train extra (pip install -e '.[train]'): {exc}", err=True)
        sys.exit(EXIT_BAD_SETTINGS)
    output = _settings(ctx).inference.repository / model
    steps = steps or TRAINING_STEPS[model]
    checkpoint = checkpoint or Path("checkpoints") / f"{model}.pt"
    if model == "us_frame":
        us_frame.train(output, checkpoint, seed=seed, steps=steps)
    elif model == "organ_ct":
        organ_ct.train(output, checkpoint, steps, seed)
    else:
        lesion_ct.train(output, checkpoint, steps, seed)
    click.echo(f"{model}: written to {output}; see its card.md for the measured metrics")


@main.group()
def destinations() -> None:
    """Where results are sent."""


@destinations.command("check")
@click.pass_context
def destinations_check(ctx: click.Context) -> None:
    """C-ECHO each DICOM destination, query each DICOMweb one; exit 4 if any is down."""
    from appliance.domain.delivery import DestinationUnavailable

    deliverer = _deliverer(ctx)
    down = 0
    for destination in _settings(ctx).delivery.destinations:
        try:
            click.echo(f"{destination.name}: {deliverer.check(destination)}")
        except DestinationUnavailable as exc:
            down += 1
            click.echo(f"{destination.name}: DOWN: {exc}")
    if down:
        sys.exit(EXIT_REFUSED)


@main.group()
def outbox() -> None:
    """Results on their way to the destinations."""


@outbox.command("list")
@click.option(
    "--state",
    type=click.Choice(["pending", "delivered", "dead_letter", "kept", "shadow"]),
    default=None,
    help="kept: made while no destination was configured; shadow: a shadow pipeline's.",
)
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def outbox_list(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """Most recent results first: where each goes, its attempts, its file and the last
    reason."""
    from appliance.domain.delivery import DeliveryState

    deliverer = _deliverer(ctx)
    rows = deliverer.ledger.rows(DeliveryState(state) if state else None, limit)
    if as_json:
        _print_json([asdict(row) for row in rows])
        return
    click.echo(f"{'STATE':<11} {'DESTINATION':<14} {'TRIES':>5}  SOP INSTANCE UID / FILE / REASON")
    for row in rows:
        click.echo(
            f"{row.state:<11} {row.destination:<14} {row.attempts:>5}  {row.sop_instance_uid}"
        )
        click.echo(f"{'':<33}{deliverer.outbox / row.path}")
        if row.reason:
            click.echo(f"{'':<33}{row.reason}")


@outbox.command("deliver")
@click.pass_context
def outbox_deliver(ctx: click.Context) -> None:
    """Attempt every due delivery now (the sweeper does this every few seconds)."""
    report = _deliverer(ctx).deliver_due(datetime.now(UTC))
    click.echo(
        f"delivered {report.delivered}, retrying {report.retrying}, "
        f"dead letters {report.dead_letters}"
    )


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.pass_context
def send(ctx: click.Context, files: tuple[Path, ...]) -> None:
    """Check DICOM files like results and queue them for every destination, then deliver."""
    from pydicom import dcmread

    from appliance.results.validate import InvalidResult, check

    deliverer = _deliverer(ctx)
    now = datetime.now(UTC)
    for path in files:
        dataset = dcmread(path)
        try:
            checked = check(dataset, [dataset])
        except InvalidResult as exc:
            click.echo(f"{path}: refused: {exc}", err=True)
            sys.exit(EXIT_REFUSED)
        deliverer.queue([checked], str(dataset.StudyInstanceUID), now)
    ctx.invoke(outbox_deliver)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="The appliance's address.")
@click.option("--port", type=int, default=None, help="Its DICOM port (default: listener.port).")
@click.option(
    "--calling", default="STORESCU", show_default=True, help="Calling AE title (a trusted peer)."
)
@click.option("--ct-slices", type=click.IntRange(8, 600), default=160, show_default=True)
@click.option("--frames", type=click.IntRange(1, 500), default=60, show_default=True)
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait.")
@click.pass_context
def demo(
    ctx: click.Context,
    host: str,
    port: int | None,
    calling: str,
    ct_slices: int,
    frames: int,
    timeout: float,
) -> None:
    """Send a phantom CT study and an ultrasound cine into a running appliance, wait for their
    jobs, and print where the results went and how long each step took."""
    from appliance.app.demo import run_demo
    from appliance.dicom.sender import Peer
    from appliance.domain.delivery import DestinationUnavailable

    settings = _settings(ctx)
    peer = Peer(settings.listener.ae_title, host, port or settings.listener.port, calling)
    try:
        done = run_demo(settings, peer, ct_slices, frames, timeout, click.echo)
    except DestinationUnavailable as exc:
        click.echo(f"appliance demo: the appliance is not reachable: {exc}", err=True)
        sys.exit(EXIT_REFUSED)
    sys.exit(0 if done else EXIT_REFUSED)


@main.group()
def config() -> None:
    """Settings."""


@config.command("check")
@click.pass_context
def config_check(ctx: click.Context) -> None:
    """Validate the settings and print them as resolved."""
    shown = yaml.safe_dump(_settings(ctx).model_dump(mode="json"), sort_keys=False)
    click.echo(mask_credentials(shown), nl=False)  # secret fields print as ********** already
    click.echo("# settings are valid", err=True)


_add_state_commands()
