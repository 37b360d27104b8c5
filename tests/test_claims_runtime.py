"""wdlib.claims (verdicts follow from checks, the ledger file) and wdlib.runtime (notebook parameters)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from wdlib.claims import ClaimResult, Ledger, load_results, verdict
from wdlib.runtime import check_parameters, resolve_device


def test_verdict_follows_from_checks():
    assert verdict({"a": True, "b": True}) == "reproduced"
    assert verdict({"a": True, "b": False}) == "partial"
    assert verdict({"a": False}) == "not reproduced"
    with pytest.raises(ValueError, match="checks"):
        verdict({})


def test_a_hand_written_verdict_that_contradicts_the_checks_is_refused():
    with pytest.raises(ValueError, match="does not follow"):
        ClaimResult(claim="X", source="s", statement="t", checks={"a": False}, key_number="1",
                    verdict="reproduced")


def test_ledger_writes_json_with_evidence_and_environment(tmp_path):
    ledger = Ledger("01_test", "smoke", directory=tmp_path)
    r = ledger.record("DEC-1", source="002", statement="s", checks={"gap small": np.bool_(True)},
                      key_number="gap 1e-15", evidence={"gap": np.float64(1e-15), "curve": np.arange(3),
                                                        "bad": float("nan")})
    assert r.verdict == "reproduced"
    assert "**DEC-1: reproduced.**" in r._repr_markdown_()
    ledger.record("DEC-1", source="002", statement="s", checks={"gap small": False}, key_number="gap 1")
    data = json.loads((tmp_path / "01_test.claims.json").read_text())
    assert data["scale"] == "smoke" and data["environment"]["torch"] == torch.__version__
    assert [c["verdict"] for c in data["claims"]] == ["not reproduced"]  # re-recording replaces
    assert load_results(tmp_path)[0]["chapter"] == "01_test"
    assert "| DEC-1 | **not reproduced** |" in ledger.markdown()


def test_ledger_defaults_to_results_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WDLIB_RESULTS_DIR", str(tmp_path))
    Ledger("02_x", "full").record("A", source="s", statement="t", checks={"c": True}, key_number="k")
    assert (tmp_path / "02_x.claims.json").exists()


def test_unknown_scale_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="scale must be one of 'smoke', 'full'"):
        check_parameters("medium")


@pytest.mark.parametrize("kwargs,name", [(dict(seed=-1), "seed"), (dict(seed=1.5), "seed"),
                                         (dict(device="tpu"), "device")])
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        check_parameters("smoke", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_asked_for_without_cuda_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


def test_check_parameters_seeds_every_generator():
    s = check_parameters("smoke", "cpu", 7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    check_parameters("smoke", "cpu", 7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert s.smoke and s.seed == 7 and s.device == torch.device("cpu")
