"""The prepared GPU check (wdlib.check, `make gpu-check`) at its tiny size on the CPU: every section's code path runs
in the unit tests (no book marker: `make unit` runs it), so none is first run on a GPU; and a failing section is
reported as failed, with its error, while the others still run, and the exit status is 1."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wdlib import check

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``python -m wdlib.check --device cpu --size tiny`` in a subprocess, as `make gpu-check` runs it on a GPU."""
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run(
        [sys.executable, "-m", "wdlib.check", "--device", "cpu", "--size", "tiny", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out


def test_the_tiny_check_passes_every_section_on_the_cpu(tiny):
    proc, out = tiny
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert (
        [s["name"] for s in report["sections"]]
        == list(check.SECTIONS)
        == [
            "optimizers",
            "gpt_bf16",
            "hutchinson",
            "optimizer_bandwidth",
            "packed",
            "chapter",
        ]
    )
    failed = {s["name"]: s["error"] or [r for r in s["rows"] if r["passed"] is False] for s in report["sections"]}
    assert all(s["status"] == "pass" for s in report["sections"]), failed
    assert report["passed"] is True
    assert (report["device"], report["device_name"], report["size"]) == ("cpu", "cpu", "tiny")
    assert report["torch"] == torch.__version__
    assert report["command"] == f"python -m wdlib.check --device cpu --size tiny --out {out}"
    assert report["wall_seconds"] >= sum(s["seconds"] for s in report["sections"]) > 0
    for section in report["sections"]:
        assert section["rows"] and section["seconds"] > 0
        for row in section["rows"]:  # a judged row states its tolerance
            assert row["passed"] is None or row["tolerance"], row


def test_the_report_has_what_a_reader_needs(tiny):
    proc, out = tiny
    report = json.loads((out / "report.json").read_text())
    sections = {s["name"]: s for s in report["sections"]}
    numbers = {row["what"]: row["numbers"] for s in report["sections"] for row in s["rows"]}
    # every wdlib optimizer and rule, with both kernels; every bf16 remedy
    parity = [w for w in numbers if w.endswith("float32")]
    assert len(parity) == 14 and sum("impl=fused" in w for w in parity) == 7
    assert all(numbers[w]["rel_err"] <= check.FP32_RTOL for w in parity)
    beyond = [w for w in numbers if w.startswith("Muon vs torch.optim.Muon") or "against the CPU" in w]
    assert len(beyond) == 3 and numbers[beyond[0]]["rel_err"] <= check.MUON_RTOL
    assert all(numbers[w]["rel_err"] <= check.FP32_RTOL for w in beyond[1:])
    bf16 = [n for w, n in numbers.items() if w.startswith("bf16 weights")]
    assert len(bf16) == 4 and all(
        set(n) == {"master_ulps", "kahan_ulps", "stochastic_ulps", "nearest_ulps"} for n in bf16
    )
    gpt = sections["gpt_bf16"]["rows"]
    assert gpt[1]["numbers"]["attention_backend"] and gpt[1]["numbers"]["tokens_per_s"] > 0
    bandwidth = [r["numbers"] for r in sections["optimizer_bandwidth"]["rows"]]
    assert bandwidth[0]["bandwidth_GB_s"] > 0 and all(n["fraction_of_bandwidth"] > 0 for n in bandwidth[1:])
    packed = sections["packed"]["rows"]  # per model: float32 parity, float64 parity, speed
    assert len(packed) == 12 and [r["passed"] is None for r in packed] == [False, False, True] * 4
    claims = [r for r in sections["chapter"]["rows"] if r["passed"] is not None]
    assert sorted(r["what"][:5] for r in claims) == ["DEC-1", "DEC-2", "DEC-3", "DEC-7", "DEC-9"]
    md = (out / "report.md").read_text()
    assert md.strip() in proc.stdout  # printed as well as written
    assert md.startswith("# wdlib GPU check: PASS")
    for name in check.SECTIONS:
        assert f"## {name}: pass (" in md
    assert "| what | numbers | tolerance | result |" in md


def _fine(ctx: check.Context) -> list[check.Row]:
    return [check.Row("a number", {"x": 1.0}), check.Row("a judged number", {"x": 1.0}, "<= 2", True)]


def _raises(ctx: check.Context) -> list[check.Row]:
    raise RuntimeError("the kernel fell over")


def _out_of_tolerance(ctx: check.Context) -> list[check.Row]:
    return [check.Row("too far | off", {"err": 0.5}, "<= 0.1", False)]


def test_a_section_that_raises_fails_alone_and_the_exit_status_is_1(tmp_path):
    sections = {"first": _fine, "broken": _raises, "off": _out_of_tolerance, "last": _fine}
    report = check.run_check("cpu", "tiny", tmp_path, sections=sections, command="test")
    status = {s["name"]: s["status"] for s in report["sections"]}
    assert status == {"first": "pass", "broken": "fail", "off": "fail", "last": "pass"}
    broken = report["sections"][1]
    assert broken["error"] == "RuntimeError: the kernel fell over" and "Traceback" in broken["notes"][0]
    assert report["passed"] is False and check.exit_status(report) == 1
    assert json.loads((tmp_path / "report.json").read_text())["sections"][1]["error"] == broken["error"]
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# wdlib GPU check: FAIL")
    assert "## broken: fail" in md and "the kernel fell over" in md
    assert "| too far \\| off | err 0.5 | <= 0.1 | **FAIL** |" in md  # a | in a cell is escaped
    assert "| a number | x 1 | - | reported |" in md
    ok = check.run_check("cpu", "tiny", None, sections={"first": _fine})
    assert ok["passed"] is True and check.exit_status(ok) == 0


def test_main_prints_the_report_and_returns_1_on_a_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(check, "SECTIONS", {"broken": _raises, "first": _fine})
    assert check.main(["--device", "cpu", "--size", "tiny", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("# wdlib GPU check: FAIL") and "[wdlib.check] broken: fail" in captured.err
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["command"] == f"python -m wdlib.check --device cpu --size tiny --out {tmp_path}"


def test_a_bad_size_is_refused_naming_the_allowed_ones(tmp_path):
    with pytest.raises(ValueError, match="size must be one of 'full', 'tiny', got 'huge'"):
        check.run_check("cpu", "huge", tmp_path)
    with pytest.raises(SystemExit):
        check.main(["--size", "huge"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_asking_for_cuda_without_it_exits_2_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        check.main(["--device", "cuda", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
    assert not (tmp_path / "report.json").exists()
