"""The one settings writer of the tests: a base tree on loopback under a test's directory,
with the peers the tests send as, and layers of sections over it (later layers win, section
by section). As a `Settings` for in-process tests, or as a YAML file for the processes."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from appliance.config import Settings

Layer = Mapping[str, Mapping[str, Any]]
# Who the tests send as: dcmtk, pynetdicom, the real PACS, and a peer bound to another host.
TEST_PEERS = [
    {"ae_title": "STORESCU", "hosts": ["127.0.0.1"]},
    {"ae_title": "PYSCU", "hosts": ["127.0.0.0/8"]},
    {"ae_title": "ORTHANC", "hosts": ["127.0.0.1"]},
    {"ae_title": "FARAWAY", "hosts": ["192.0.2.10"]},
]


def _base(directory: Path) -> dict[str, dict[str, Any]]:
    return {
        "listener": {"host": "127.0.0.1", "port": 0, "peers": TEST_PEERS},
        "spool": {"path": str(directory / "spool")},
        "database": {"url": f"sqlite:///{directory}/appliance.db"},
        "queue": {"broker_url": f"sqla+sqlite:///{directory}/broker.db"},
        "delivery": {"outbox": str(directory / "outbox")},
        # Starlette's TestClient sends Host: testserver
        "dashboard": {"allowed_hosts": ["testserver", "127.0.0.1", "localhost"]},
    }


def settings_tree(directory: Path, *layers: Layer) -> dict[str, dict[str, Any]]:
    tree = _base(directory)
    for layer in layers:
        for section, values in layer.items():
            tree[section] = {**tree.get(section, {}), **values}
    return tree


def make_settings(directory: Path, *layers: Layer) -> Settings:
    return Settings.model_validate(settings_tree(directory, *layers))


def write_config(directory: Path, *layers: Layer) -> Path:
    """`directory/appliance.yaml`, for `appliance --config`."""
    config = directory / "appliance.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(settings_tree(directory, *layers)))
    return config
