"""Fault benchmark: SIGKILL the listener at random points, a hundred times and more, while
several senders push studies; then account for every instance (tests/support/listener_kills.py).

The peer, measured in the same run, is the same senders against a listener nobody kills: its
wall time is what the kills cost.

    .venv/bin/python -m bench.kills [--kills 120] [--senders 4] [--database sqlite|postgresql]
"""

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg

from tests.support.listener_kills import KillReport, kill_repeatedly
from tests.support.services import free_port


def database(kind: str, directory: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{directory}/appliance.db"
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def run(arguments: argparse.Namespace, kills: int) -> KillReport:
    with tempfile.TemporaryDirectory(prefix="kills-") as scratch:
        directory = Path(scratch)
        return kill_repeatedly(
            directory,
            free_port(),
            database(arguments.database, directory),
            senders=arguments.senders,
            studies_per_sender=arguments.studies,
            instances_per_study=arguments.instances,
            kills=kills,
            seed=arguments.seed,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=120)
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--studies", type=int, default=14, help="studies per sender")
    parser.add_argument("--instances", type=int, default=250, help="instances per study")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--seed", type=int, default=20261125)
    arguments = parser.parse_args()

    killed = run(arguments, arguments.kills)
    print(f"== {arguments.kills} kills requested, {arguments.senders} senders, "
          f"{arguments.database} ==")  # fmt: skip
    print("\n".join(killed.lines()))
    calm = run(arguments, 0)
    print("== the same senders, no kill (peer) ==")
    print("\n".join(calm.lines()))
    failures = [
        name
        for name, bad in (
            ("fewer kills than asked: the senders finished first", killed.kills < arguments.kills),
            ("acknowledged instances lost", bool(killed.lost)),
            ("stored bytes differ", bool(killed.mismatched)),
            ("an instance never acknowledged", killed.acknowledged != killed.instances),
            ("duplicate rows", killed.database_rows != killed.distinct_instances),
            ("spool files != instances", killed.spool_files != killed.instances),
        )
        if bad
    ]
    print("RESULT:", "PASS" if not failures else "FAIL: " + "; ".join(failures))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
