"""Packaging: the wheel carries sql/ and flows/, and the compose file describes the services."""

import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from eef_tasks import store

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_sql_files_and_flows(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("eef-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in store.sql_dir().rglob("*.sql"):
        assert f"eef_tasks/sql/{path.relative_to(store.sql_dir())}" in names
    assert "flows/selection.py" in names
    assert any(name.endswith("entry_points.txt") for name in names)


def test_compose_file_declares_server_database_and_worker():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "worker"} <= set(services)
    assert "postgresql" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["worker"]["environment"]["PREFECT_API_URL"].startswith("http://prefect-server:4200")
    assert (ROOT / services["worker"]["build"]["context"] / "Dockerfile").exists()


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert ci.strip().splitlines()[-1] == "make test"
