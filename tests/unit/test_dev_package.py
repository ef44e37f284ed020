"""The developer tooling (streamtoll.dev) stays off the production import path.

import-linter (pyproject.toml) forbids production modules to import it, except the command
line's dev commands, which import theirs inside the command function: this checks that they
really do, i.e. that loading the command line and every other streamtoll module loads nothing
from streamtoll.dev."""

from __future__ import annotations

import subprocess
import sys

_PROBE = """
import importlib, pkgutil, sys
import streamtoll
from streamtoll.cli import build_parser
build_parser()
for m in pkgutil.iter_modules(streamtoll.__path__):
    if m.name != "dev":
        importlib.import_module("streamtoll." + m.name)
print(sorted(name for name in sys.modules if name == "streamtoll.dev" or name.startswith("streamtoll.dev.")))
"""


def test_the_command_line_loads_no_dev_module() -> None:
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_dev_modules_find_the_samples() -> None:
    """The sample catalog stays in streamtoll/samples (package data), one level up."""
    from streamtoll.dev import bench_billing, demo, up

    for module in (bench_billing, demo, up):
        assert (module.SAMPLES / "plans.yaml").is_file() and (module.SAMPLES / "accounts.yaml").is_file()
