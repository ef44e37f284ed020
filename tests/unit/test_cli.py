"""The command line follows the conventions operators expect (gh, kubectl, stripe): a version,
help on every flag, one way to ask for machine output, documented exit codes, options after the
command, and input refused before anything starts."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamtoll.cli import DEVELOPER_COMMANDS, EXIT_CODES, OPERATOR_COMMANDS, build_parser, main

ROOT = Path(__file__).parents[2]

# commands that run a process or write files rather than print data
NOT_DATA = {
    "worker",
    "sink",
    "api",
    "gateway",
    "up",
    "demo",
    "broker",
    "caps",
    "jobs",
    "bench ingest",
    "bench gateway",
    "bench billing",
    "bench api",
}


def _commands(
    parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    parser = parser or build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs or parser.get_default("func") is not None:  # a command, maybe with actions too (usage)
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from _commands(child, (*path, name))


def test_every_flag_and_argument_has_help() -> None:
    missing = []
    for path, parser in [((), build_parser()), *_commands()]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if action.help is None or (action.help != argparse.SUPPRESS and not action.help.strip()):
                missing.append(f"streamtoll {' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_every_command_that_prints_data_takes_the_one_output_option() -> None:
    for path, parser in _commands():
        name = " ".join(path)
        if name in NOT_DATA:
            continue
        options = {o: a for a in parser._actions for o in a.option_strings}
        assert "-o" in options and "--output" in options and "--json" in options, name
        assert "json" in options["-o"].choices and "table" in options["-o"].choices, name
        assert options["--json"].dest == options["-o"].dest == "output", name
        if "csv" in options["-o"].choices:
            assert options["--csv"].const == "csv", name
        assert build_parser().parse_args([*path, *_required(path), "--json"]).output == "json", name


def _required(path: tuple[str, ...]) -> list[str]:
    return {
        ("accounts", "load"): ["f.yaml"],
        ("plans", "load"): ["f.yaml"],
        ("keys", "revoke"): ["abc"],
        ("credentials", "create"): ["--account", "acme"],
        ("credentials", "revoke"): ["cred_1"],
        ("credentials", "rotate"): ["cred_1"],
        ("webhooks", "add"): ["acme", "https://hooks.example/in"],
        ("webhooks", "remove"): ["acme", "whe_1"],
        ("webhooks", "replay"): ["1"],
        ("webhooks", "attempts"): ["1"],
        ("alerts", "add"): ["acme", "150.00"],
        ("alerts", "remove"): ["thr_1"],
        ("alerts", "check"): ["--period", "2026-11"],
        ("entitlements", "show"): ["--account", "acme"],
        ("products", "load"): ["products.yaml"],
        ("products", "show"): ["orders-feed"],
        ("products", "subscribe"): ["acme", "orders-feed"],
        ("products", "unsubscribe"): ["acme", "orders-feed"],
        ("products", "approve"): ["1"],
        ("products", "reject"): ["1", "--reason", "no"],
        ("usage",): ["--from", "2026-11-01", "--to", "2026-12-01"],
        ("usage", "import"): ["f.csv", "--from", "2026-11-01", "--to", "2026-12-01", "--reason", "x"],
        ("usage", "remeter"): [
            "--replayed",
            "postgresql://x",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--reason",
            "x",
        ],
        ("amendments", "show"): ["1"],
        ("bill",): ["--period", "2026-11"],
        ("invoices", "show"): ["draft-1"],
        ("invoices", "finalize"): ["draft-1"],
        ("invoices", "pdf"): ["INV-2026-000001"],
        ("invoices", "send"): ["--period", "2026-11"],
        ("invoices", "void"): ["INV-2026-000001", "--reason", "x"],
        ("statements",): ["--account", "acme", "--period", "2026-11"],
        ("credit-notes", "create"): ["INV-2026-000001", "--full", "--reason", "error"],
        ("credit-notes", "show"): ["CN-2026-0001"],
        ("grants", "add"): ["acme", "--units", "500", "--meter", "consume_bytes", "--unit", "GB", "--reason", "x"],
        ("grants", "void"): ["1", "--reason", "x"],
        ("balance",): ["acme"],
        ("credit-notes", "pdf"): ["CN-2026-0001"],
    }.get(path, [])


def test_the_help_lists_operator_and_developer_commands_apart_and_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    operators, developers = text.index("operator commands:"), text.index("developer commands:")
    for name, _ in OPERATOR_COMMANDS:
        assert operators < text.index(f"\n  {name} ") < developers, name
    for name, _ in DEVELOPER_COMMANDS:
        assert text.index(f"\n  {name} ") > developers, name
    registered = {path[0] for path, _ in _commands()}
    assert registered == {n for n, _ in OPERATOR_COMMANDS + DEVELOPER_COMMANDS}
    for code, meaning in EXIT_CODES.items():
        assert f"  {code}  {meaning}" in text
    readme = (ROOT / "README.md").read_text()
    for code in EXIT_CODES:  # the README documents the same codes
        assert re.search(rf"^\| `{code}` \|", readme, re.M), f"exit code {code} is not in the README's table"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert re.fullmatch(r"streamtoll \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_log_level_before_or_after_the_command_any_case() -> None:
    assert build_parser().parse_args(["--log-level", "debug", "settings"]).log_level == "DEBUG"
    assert build_parser().parse_args(["settings", "--log-level", "warning"]).log_level == "WARNING"
    assert build_parser().parse_args(["invoices", "list", "--log-level", "ERROR"]).log_level == "ERROR"
    assert build_parser().parse_args(["settings"]).log_level is None  # main() then reads STREAMTOLL_LOG_LEVEL


def test_invoice_refs_are_shell_safe() -> None:
    assert build_parser().parse_args(["invoices", "show", "draft-42"]).ref == "draft-42"
    assert build_parser().parse_args(["invoices", "show", "#42"]).ref == "draft-42"  # when quoted
    assert build_parser().parse_args(["invoices", "show", "INV-2026-000042"]).ref == "INV-2026-000042"
    runbook = (ROOT / "deploy" / "runbook.md").read_text()
    assert not re.search(r"streamtoll invoices \w+ #", runbook), "the shell drops `#42`: use draft-42"


def _cli(args: list[str], cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMTOLL_")}
    env.update({f"STREAMTOLL_{k}": v for k, v in settings.items()})
    return subprocess.run(
        [sys.executable, "-m", "streamtoll.cli", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["bill", "--period", "2026-13"], "'2026-13' is not a billing period like 2026-11"),
        (["invoices", "list", "--period", "２０２６-11"], "is not a billing period"),
        (["statements", "--account", "acme", "--period", "9999-12"], "'9999-12' is not a billing period"),
        (["usage", "--from", "yesterday", "--to", "2026-12-01"], "'yesterday' is not a date"),
        (["--log-level", "loud", "settings"], "'loud' is not one of DEBUG, INFO, WARNING, ERROR"),
        (["api", "--bind", "8080"], "'8080' is not HOST:PORT"),
        (["bench", "memory", "--hours", "841"], "at most 840 hours"),
        (["bench", "memory", "--snapshot-interval", "60"], "give --hours too"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(tmp_path: Path, args: list[str], says: str) -> None:
    """Nothing is started or created for a command line that is wrong (no embedded database
    under .streamtoll/, no broker): one sentence, exit 2."""
    out = _cli(args, tmp_path)
    assert out.returncode == 2, out.stderr
    assert says in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / ".streamtoll").exists()


def test_settings_are_checked_before_anything_starts(tmp_path: Path) -> None:
    out = _cli(["worker"], tmp_path, KAFKA_BOOTSRAP="kafka:9092", LOG_LEVL="DEBUG")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert (
        "STREAMTOLL_KAFKA_BOOTSRAP is not a streamtoll setting; did you mean STREAMTOLL_KAFKA_BOOTSTRAP?" in out.stderr
    )
    assert "did you mean STREAMTOLL_LOG_LEVEL?" in out.stderr
    assert not (tmp_path / ".streamtoll").exists()  # no embedded broker took the misspelt bootstrap's place
    bad_level = _cli(["settings"], tmp_path, LOG_LEVEL="chatty")
    assert bad_level.returncode == 2 and "STREAMTOLL_LOG_LEVEL: 'chatty' is not one of" in bad_level.stderr


@pytest.mark.parametrize("command", [["worker"], ["sink"], ["db", "upgrade"], ["bill", "--period", "2026-11"], ["up"]])
def test_embedded_never_makes_an_unset_connection_an_error(tmp_path: Path, command: list[str]) -> None:
    out = _cli(command, tmp_path, EMBEDDED="never")
    assert out.returncode == 2, out.stderr
    assert "is not set and STREAMTOLL_EMBEDDED=never" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / ".streamtoll").exists()


def test_settings_lists_values_and_hides_secrets(tmp_path: Path) -> None:
    out = _cli(["settings", "-o", "json"], tmp_path, KAFKA_SASL_PASSWORD="hunter2", MAX_LATENESS="40d")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["STREAMTOLL_MAX_LATENESS"]["value"] == "40d" and rows["STREAMTOLL_MAX_LATENESS"]["default"] == "35d"
    assert rows["STREAMTOLL_KAFKA_SASL_PASSWORD"]["value"] == "(set, secret)" and "hunter2" not in out.stdout
    assert "STREAMTOLL_TEST_DATABASE_URL" not in rows  # developer settings only with --all


def test_the_api_republishes_entitlements_just_after_each_utc_midnight() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    from streamtoll.cli import seconds_to_next_utc_day

    assert seconds_to_next_utc_day(datetime(2026, 12, 7, 23, 59, 0, tzinfo=UTC)) == 65
    assert seconds_to_next_utc_day(datetime(2026, 12, 31, 0, 0, 0, tzinfo=UTC)) == 86405
    # a local time is the same instant: 01:00 in UTC+2 is 23:00 UTC the day before
    assert seconds_to_next_utc_day(datetime(2026, 12, 8, 1, 0, tzinfo=timezone(timedelta(hours=2)))) == 3605


def test_caps_says_what_it_needs_in_one_sentence(tmp_path: Path) -> None:
    unset = _cli(["caps"], tmp_path)
    assert unset.returncode == 2 and "set STREAMTOLL_KAFKA_BOOTSTRAP" in unset.stderr, unset.stderr
    assert "Traceback" not in unset.stderr and not (tmp_path / ".streamtoll").exists()
    kafka = {"KAFKA_BOOTSTRAP": "127.0.0.1:1", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    gssapi = _cli(["caps"], tmp_path, **kafka, KAFKA_SASL_MECHANISM="GSSAPI")
    assert gssapi.returncode == 2 and "SASL mechanism GSSAPI is not one streamtoll caps can use" in gssapi.stderr
    assert "Traceback" not in gssapi.stderr
