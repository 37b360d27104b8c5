"""wdlib.claims: the catalogue, measurements, margins, verdicts, the ledger file."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from wdlib.claims import (
    MIN_SEEDS,
    ClaimResult,
    Ledger,
    Measurement,
    Test,
    catalogue,
    claim,
    judge_test,
    load_results,
    opposite,
    rejudge,
    verdict,
)

ROOT = Path(__file__).resolve().parents[2]

TOY = {
    "chapter": "01_toy",
    "claims": [
        {
            "id": "TOY-1",
            "sources": ["su2025"],
            "statement": "s",
            "measure": "m",
            "seeds": "5",
            "rule": {
                "text": "slope of something",
                "tests": [
                    {"name": "slope", "label": "slope", "op": "abs<=", "threshold": 0.5},
                    {"name": "gap", "label": "gap", "op": ">=", "threshold": 0.0, "part": "secondary"},
                ],
                "sanity": [{"name": "identity", "label": "identity error", "op": "<=", "threshold": 1e-12}],
            },
            "revisions": [{"date": "2026-11-30", "change": "c", "why": "w", "after_data": True}],
        },
        {
            "id": "TOY-2",
            "sources": ["su2025"],
            "statement": "s",
            "measure": "m",
            "rule": {"text": "an identity", "untested": "identity only: shown, not counted"},
        },
    ],
}


@pytest.fixture()
def toy(tmp_path):
    d = tmp_path / "cat"
    d.mkdir()
    (d / "01_toy.yml").write_text(yaml.safe_dump(TOY))
    return d


def seeds(*v):
    return Measurement.from_seeds(v)


# -------------------------------------------------------------------------------------- tests and margins
def test_margin_decides_pass_fail_and_inconclusive():
    t = Test("x", "x", "<=", 1.0)
    ok = judge_test(t, seeds(0.0, 0.1, -0.1, 0.05, -0.05))  # mean 0, sd 0.079: margin ~ +12.6
    assert ok["outcome"] == "pass" and ok["margin"] == pytest.approx(1 / np.std([0, 0.1, -0.1, 0.05, -0.05], ddof=1))
    assert ok["seeds_passing"] == 5
    bad = judge_test(t, seeds(2.0, 2.1, 1.9))
    assert bad["outcome"] == "fail" and bad["margin"] < -1
    thin = judge_test(t, seeds(0.5, 1.5, 0.8, 1.2))  # mean 1.0 +- 0.43: margin 0
    assert thin["outcome"] == "inconclusive"
    assert judge_test(t, seeds(0.9, 0.95))["outcome"] == "inconclusive"  # fewer than MIN_SEEDS
    assert MIN_SEEDS == 3
    assert judge_test(t, seeds(0.0, float("nan"), 0.1))["outcome"] == "inconclusive"
    assert judge_test(t, Measurement.exact(0.999))["outcome"] == "pass"
    assert judge_test(t, Measurement.exact(1.001))["outcome"] == "fail"
    assert judge_test(t, seeds(0.5, 0.5, 0.5))["outcome"] == "pass"  # zero spread, on the claim's side


@pytest.mark.parametrize(
    "op,threshold,good,badv",
    [("<=", -0.5, -0.9, -0.1), (">=", 0.7, 0.9, 0.2), ("abs<=", 0.5, -0.2, 0.8), ("abs>=", 0.1, -0.4, 0.05)],
)
def test_each_operator_and_its_opposite(op, threshold, good, badv):
    t = Test("x", "x", op, threshold)
    m = seeds(good - 0.01, good, good + 0.01)
    assert judge_test(t, m)["outcome"] == "pass"
    assert judge_test(t, seeds(badv - 0.01, badv, badv + 0.01))["outcome"] == "fail"
    flipped = opposite(t, m)
    assert judge_test(t, flipped)["outcome"] == "fail"
    assert judge_test(t, opposite(t, Measurement.exact(good)))["outcome"] == "fail"


def test_bootstrap_spread_is_reproducible_and_nan_aware():
    units = [1.0, 2.0, 3.0, 4.0, 5.0]
    a = Measurement.bootstrap(lambda u: float(np.mean(u)), units, seed=3)
    b = Measurement.bootstrap(lambda u: float(np.mean(u)), units, seed=3)
    assert a == b and a.value == 3.0 and a.kind == "bootstrap" and a.n == 5
    # the seed-equivalent spread: bootstrap SE of the mean times sqrt(n) ~ the per-seed standard deviation
    assert a.spread == pytest.approx(np.std(units), rel=0.15)
    assert a.interval[0] < 3.0 < a.interval[1]
    undefined = Measurement.bootstrap(lambda u: float("nan") if len(set(u)) < 5 else 1.0, units)
    assert math.isnan(undefined.spread)
    assert judge_test(Test("x", "x", ">=", 0), undefined)["outcome"] == "inconclusive"
    with pytest.raises(ValueError, match="two seeds"):
        Measurement.bootstrap(np.mean, [1.0])


def test_from_seeds_interval_is_student_t():
    m = seeds(1.0, 2.0, 3.0)
    half = 4.302652729911275 * 1.0 / math.sqrt(3)
    assert m.interval == pytest.approx((2 - half, 2 + half))
    assert Measurement.from_dict(m.to_dict()) == m


def test_verdict_rules():
    row = lambda part, outcome: {"part": part, "outcome": outcome}  # noqa: E731
    assert verdict([row("core", "pass"), row("secondary", "pass")]) == "reproduced"
    assert verdict([row("core", "pass"), row("secondary", "fail")]) == "partial"
    assert verdict([row("core", "pass"), row("secondary", "inconclusive")]) == "partial"
    assert verdict([row("core", "pass"), row("core", "inconclusive")]) == "inconclusive"
    assert verdict([row("core", "fail"), row("core", "pass"), row("secondary", "pass")]) == "not reproduced"
    assert verdict([row("core", "pass")], sanity_ok=False) == "inconclusive"
    assert verdict([row("core", "fail")], sanity_ok=False) == "not reproduced"
    assert verdict([]) == "not tested"
    with pytest.raises(ValueError, match="core"):
        verdict([row("secondary", "pass")])


# --------------------------------------------------------------------------------------------- catalogue
def test_ledger_judges_by_the_catalogue_and_records_json(toy, tmp_path):
    ledger = Ledger("01_toy", "smoke", directory=tmp_path, seed=0, catalogue_dir=toy)
    r = ledger.judge(
        "TOY-1",
        measured={"slope": seeds(0.1, 0.0, 0.05, -0.02, 0.03), "gap": seeds(0.3, 0.4, 0.35)},
        sanity={"identity": 1e-15},
        key_number="slope 0.03",
        evidence={"curve": np.arange(3)},
    )
    assert r.verdict == "reproduced"
    assert "| slope | core |" in r.markdown() and "**pass**" in r.markdown()
    r2 = ledger.judge(
        "TOY-1", measured={"slope": seeds(0.1, 0.0, 0.05), "gap": seeds(-0.3, -0.4, -0.35)}, sanity={"identity": 1e-15}
    )
    assert r2.verdict == "partial"
    r3 = ledger.judge("TOY-2", measured={}, sanity={})
    assert r3.verdict == "not tested"
    data = json.loads((tmp_path / "01_toy.claims.json").read_text())
    assert data["seed"] == 0 and data["environment"]["torch"] == torch.__version__
    assert [c["verdict"] for c in data["claims"]] == ["partial", "not tested"]  # re-judging replaces
    for rec in data["claims"]:
        assert rejudge(rec, toy) == rec["verdict"]
    assert rejudge(data["claims"][0], toy, mutate=True) == "not reproduced"
    assert load_results(tmp_path)[0]["chapter"] == "01_toy"
    assert "| TOY-1 | **partial** |" in ledger.markdown()


def test_a_failed_sanity_check_can_only_lower_a_verdict(toy, tmp_path):
    ledger = Ledger("01_toy", "smoke", directory=tmp_path, catalogue_dir=toy)
    good = {"slope": seeds(0.1, 0.0, 0.05), "gap": seeds(0.3, 0.4, 0.35)}
    assert ledger.judge("TOY-1", measured=good, sanity={"identity": 1e-3}).verdict == "inconclusive"
    bad = {"slope": seeds(0.9, 1.0, 0.95), "gap": seeds(0.3, 0.4, 0.35)}
    assert ledger.judge("TOY-1", measured=bad, sanity={"identity": 0.0}).verdict == "not reproduced"


def test_judge_refuses_booleans_wrong_names_and_other_chapters(toy, tmp_path):
    ledger = Ledger("01_toy", "smoke", directory=tmp_path, catalogue_dir=toy)
    with pytest.raises(TypeError, match="not a boolean"):
        ledger.judge("TOY-1", measured={"slope": True, "gap": 1.0}, sanity={"identity": 0.0})
    with pytest.raises(ValueError, match="missing \\['gap'\\]"):
        ledger.judge("TOY-1", measured={"slope": 0.1}, sanity={"identity": 0.0})
    with pytest.raises(ValueError, match="sanity"):
        ledger.judge("TOY-1", measured={"slope": 0.1, "gap": 1.0}, sanity={})
    with pytest.raises(KeyError, match="TOY-9"):
        ledger.judge("TOY-9", measured={})
    with pytest.raises(ValueError, match="belongs to chapter"):
        Ledger("02_other", "smoke", directory=tmp_path, catalogue_dir=toy).judge("TOY-1", measured={})


@pytest.mark.parametrize(
    "mutation,match",
    [
        (lambda c: c["rule"]["tests"][0].update(op="<"), "op must be one of"),
        (lambda c: c["rule"]["tests"][0].update(part="main"), "part must be"),
        (lambda c: [t.update(part="secondary") for t in c["rule"]["tests"]], "core"),
        (lambda c: c["rule"].update(tests=[]), "untested"),
        (lambda c: c.pop("measure"), "missing measure"),
    ],
)
def test_catalogue_validation(tmp_path, mutation, match):
    doc = json.loads(json.dumps(TOY))
    mutation(doc["claims"][0])
    d = tmp_path / f"bad{abs(hash(match))}"
    d.mkdir()
    (d / "01_toy.yml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=match):
        catalogue(d)


def test_the_book_catalogue_is_complete_and_cites_known_sources():
    cat = catalogue()
    assert len(cat) == 36
    families = {"DEC": 9, "EMA": 5, "SCALE": 3, "OVER": 5, "LLM": 7, "NEW": 7}
    for fam, n in families.items():
        assert sorted(k for k in cat if k.startswith(fam + "-")) == sorted(f"{fam}-{i}" for i in range(1, n + 1))
    refs = set(re.findall(r"^## (\S+)$", (ROOT / "book" / "references.md").read_text(), flags=re.M))
    notebooks = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    for cid, c in cat.items():
        assert set(c.sources) <= refs, f"{cid} cites {set(c.sources) - refs}, not on the references page"
        assert c.chapter in notebooks, f"{cid}: no notebook {c.chapter}"
        assert "TODO" not in c.rule + c.seeds + c.untested, f"{cid}: the rule is not written yet"
        assert c.tests or c.untested, cid
        for r in c.revisions:
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r.date), f"{cid}: revision date {r.date!r}"
    assert claim("DEC-8").chapter == "01b_decoupling_in_practice"


def test_claim_result_markdown_shows_sanity_checks():
    r = ClaimResult(
        claim="X",
        tests=[],
        sanity=[{"name": "a", "label": "probe", "value": 0.0, "rule": "", "holds": True}],
        verdict="not tested",
        key_number="k",
    )
    assert "Sanity checks (not counted): probe = 0 (holds)" in r.markdown()
