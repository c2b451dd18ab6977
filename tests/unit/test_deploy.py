"""deploy/: the image, the compose file and the systemd units parse, run only commands the
appliance has, keep state on volumes, and carry settings files that validate."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.config import load_settings
from tests.support.cli import command_exists

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
IMAGE = "appliance:0.1.0"


def test_the_image_is_multi_stage_pinned_and_runs_as_a_user() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert len(bases) >= 2
    assert all(re.search(r":\d+\.\d+\.\d+", base) for base in bases), bases
    final = dockerfile.split("\nFROM ")[-1]
    assert re.search(r"^USER 10001", final, re.MULTILINE)
    assert 'ENTRYPOINT ["appliance"]' in final
    assert "COPY --from=build /opt/appliance /opt/appliance" in final
    for copied in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for source in copied.split():
            assert (DEPLOY.parent / source).exists(), source
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "var", "checkpoints"} <= set(ignored)


def compose() -> dict[str, dict[str, object]]:
    services: dict[str, dict[str, object]] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())[
        "services"
    ]
    return services


def test_compose_runs_each_role_as_a_service_with_its_state_on_volumes() -> None:
    services = compose()
    ours = {name: s for name, s in services.items() if s.get("image") == IMAGE}
    commands = {name: s["command"] for name, s in ours.items()}
    assert commands == {
        "migrate": ["db", "upgrade"],
        "listener": ["listen"],
        "sweeper": ["sweep"],
        "worker": ["worker"],
        "dashboard": ["dashboard"],
    }
    for name, words in commands.items():
        assert isinstance(words, list)
        assert command_exists(words), name
        service = ours[name]
        assert service["user"] == "10001:10001"
        assert service["read_only"] is True
        volumes = [str(v) for v in service["volumes"]]  # type: ignore[attr-defined]
        assert any(v.startswith("spool:/var/lib/appliance/spool") for v in volumes)
    assert {"postgres", "redis", "triton"} <= set(services)
    for name, service in services.items():
        image = str(service["image"])
        assert not image.endswith(":latest"), name
        assert re.search(r":\d", image), f"{name}: {image} is not pinned"
    gpu = services["triton"]["deploy"]["resources"]["reservations"]["devices"]  # type: ignore[index]
    assert gpu[0]["capabilities"] == ["gpu"]
    assert "database:/var/lib/postgresql/data" in services["postgres"]["volumes"]  # type: ignore[operator]


@pytest.mark.parametrize("name", ["appliance.compose.yaml", "appliance.production.yaml",
                                  "appliance.example.yaml"])  # fmt: skip
def test_the_example_settings_validate(name: str) -> None:
    settings = load_settings(DEPLOY / name, environ={})
    if name != "appliance.example.yaml":
        assert settings.inference.backend == "triton"
        assert settings.spool.path == Path("/var/lib/appliance/spool")
        assert settings.queue.broker_url.startswith("redis://")


def units() -> list[Path]:
    return sorted((DEPLOY / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", units(), ids=lambda p: p.name)
def test_each_systemd_unit_runs_an_appliance_command_under_its_own_user(unit: Path) -> None:
    text = unit.read_text()
    (start,) = re.findall(r"^ExecStart=(.+)$", text, re.MULTILINE)
    binary, *words = start.split()
    assert binary == "/opt/appliance/bin/appliance"
    assert command_exists(words), start
    assert "User=appliance" in text
    assert "NoNewPrivileges=yes" in text
    assert "ProtectSystem=strict" in text
    if "ReadWritePaths" in text:
        assert "ReadWritePaths=/var/lib/appliance" in text


def test_systemd_accepts_the_units() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    found = subprocess.run(
        [analyze, "verify", *(str(unit) for unit in units())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    complaints = [
        line
        for line in (found.stdout + found.stderr).splitlines()
        if line.strip() and "/opt/appliance/bin/appliance is not executable" not in line
    ]  # the binary exists only where the appliance is installed
    assert complaints == []


def test_a_misspelt_command_is_caught() -> None:
    assert command_exists(["db", "upgrade"])
    assert not command_exists(["db", "upgarde"])
    assert not command_exists(["serv"])
    assert not command_exists(["users"])
    assert command_exists(["users", "add", "alice", "--role", "admin"])
