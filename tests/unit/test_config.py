"""Settings: YAML plus environment, validated with messages that name the field."""

from pathlib import Path

import pytest

from appliance.config import SettingsError, load_settings
from appliance.domain.policy import DuplicatePolicy


def test_defaults_are_valid_and_embedded() -> None:
    settings = load_settings(environ={})
    assert settings.database.url.startswith("sqlite:///")
    assert settings.listener.ae_title == "APPLIANCE"
    assert settings.study.quiet_period_seconds == 30


def test_yaml_then_environment_overrides(tmp_path: Path) -> None:
    config = tmp_path / "appliance.yaml"
    config.write_text(
        "listener:\n  port: 104\n  peers:\n    - ae_title: PACS\n      hosts: [10.0.0.0/8]\n"
        "study:\n  quiet_period_seconds: 12\n"
    )
    settings = load_settings(
        config,
        environ={
            "APPLIANCE_LISTENER__PORT": "11112",
            "APPLIANCE_LISTENER__DUPLICATE_POLICY": "replace",
            "APPLIANCE_DATABASE__URL": "postgresql+psycopg://app@db/appliance",
        },
    )
    assert settings.listener.port == 11112
    assert settings.listener.peers[0].hosts == ["10.0.0.0/8"]
    assert settings.listener.duplicate_policy is DuplicatePolicy.REPLACE
    assert settings.study.quiet_period_seconds == 12
    assert settings.database.url == "postgresql+psycopg://app@db/appliance"


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "a.yaml"
    config.write_text("spool:\n  disk_watermark_percent: 75\n")
    settings = load_settings(environ={"APPLIANCE_CONFIG": str(config)})
    assert settings.spool.disk_watermark_percent == 75


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"APPLIANCE_LISTENER__PORT": "70000"}, "listener.port"),
        ({"APPLIANCE_LISTENER__AE_TITLE": "WAY_TOO_LONG_AE_TITLE"}, "listener.ae_title"),
        ({"APPLIANCE_SPOOL__DISK_WATERMARK_PERCENT": "0"}, "spool.disk_watermark_percent"),
        ({"APPLIANCE_STUDY__QUIET_PERIOD_SECONDS": "soon"}, "study.quiet_period_seconds"),
        ({"APPLIANCE_DATABASE__URL": "mysql://x"}, "database.url"),
        (
            {"APPLIANCE_LISTENER__PEERS": "[{ae_title: X, hosts: [nowhere]}]"},
            "listener.peers.0.hosts",
        ),
        ({"APPLIANCE_LISTENER__TLS__ENABLED": "true"}, "listener.tls"),
        ({"APPLIANCE_SPOOL__TYPO": "1"}, "spool.typo"),
        ({"APPLIANCE_LISTNER__PORT": "104"}, "APPLIANCE_LISTNER__PORT: no such settings section"),
        ({"APPLIANCE_LISTENER__PEERS": "[{ae_title: X"}, "peers: not valid YAML"),
    ],
)
def test_bad_values_name_the_field(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        load_settings(environ=environ)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(tmp_path / "missing.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("listener: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(bad, environ={})
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(SettingsError, match="mapping of sections"):
        load_settings(scalar, environ={})
