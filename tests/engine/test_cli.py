"""The command line (`wdlib` / `python -m wdlib`): the timescale calculator, its output and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "wdlib", *args], capture_output=True, text=True, timeout=60)


def test_cli_prints_timescales():
    out = _cli("tau", "--lr", "0.001", "--weight-decay", "0.1", "--dataset-size", "50000", "--batch-size", "128")
    assert out.returncode == 0, out.stderr
    assert "tau_iter  = 10000 iterations" in out.stdout
    assert "tau_epoch = 25.6 epochs" in out.stdout


def test_cli_transfer_json():
    out = _cli(
        "tau",
        "--lr",
        "1e-3",
        "--weight-decay",
        "0.1",
        "--dataset-size",
        "50000",
        "--batch-size",
        "128",
        "--to-dataset-size",
        "200000",
        "--width",
        "256",
        "--to-width",
        "1024",
        "--mup",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["transfer"]["lr"] == pytest.approx(2.5e-4)
    assert result["transfer"]["weight_decay"] == pytest.approx(0.1)


def test_cli_rejects_bad_values_with_the_argument_name():
    out = _cli("tau", "--lr", "-1", "--weight-decay", "0.1", "--dataset-size", "10", "--batch-size", "1")
    assert out.returncode == 2
    assert "lr must be" in out.stderr
    out = _cli(
        "tau", "--lr", "1e-3", "--weight-decay", "0.1", "--dataset-size", "10", "--batch-size", "1", "--to-width", "4"
    )
    assert out.returncode == 2 and "--width" in out.stderr


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--lr", "1e-320"),
        ("--lr", "1e308"),
        ("--lr", "inf"),
        ("--lr", "nan"),
        ("--lr", "0"),
        ("--lr", "-1e-3"),
        ("--weight-decay", "1e-320"),
        ("--weight-decay", "-inf"),
        ("--dataset-size", "9" * 300),
        ("--batch-size", "0"),
        ("--to-dataset-size", "9" * 300),
    ],
)
def test_cli_extreme_values_are_range_errors(flag, value, capsys):
    """Never tau_iter = 0 or inf, a ZeroDivisionError or an OverflowError: one line naming the argument and its
    range."""
    from wdlib.cli import main

    args = {"--lr": "1e-3", "--weight-decay": "0.1", "--dataset-size": "50000", "--batch-size": "128", flag: value}
    with pytest.raises(SystemExit) as err:
        main(["tau", *[x for kv in args.items() for x in kv]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"wdlib: error: {flag} must be") and "in [" in lines[0] and len(lines[0]) < 200


def test_cli_extreme_value_through_the_entry_point():
    out = _cli("tau", "--lr", "1e-320", "--weight-decay", "0.1", "--dataset-size", "10", "--batch-size", "1")
    assert (
        out.returncode == 2
        and out.stderr.strip() == "wdlib: error: --lr must be a finite number in [1e-50, 1e+50], got 1e-320"
    )
    assert "Traceback" not in out.stderr and out.stdout == ""
