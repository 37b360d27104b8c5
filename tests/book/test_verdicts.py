"""The verdicts recorded by the built book (run after ``make book``; ``make test`` does).

Every catalogued claim must be recorded by its chapter; each recorded verdict must follow from its
recorded measurements by the catalogue's rule; and no counted test may be true by construction: moving
every measurement of a claim to the wrong side of its threshold (by its own distance plus two seed
spreads) must turn the verdict into "not reproduced".
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wdlib.claims import MIN_SEEDS, catalogue, load_results, rejudge

pytestmark = pytest.mark.book

RESULTS = Path(__file__).resolve().parents[2] / "_build" / "results"


def _recorded() -> dict[str, dict]:
    if not RESULTS.exists():
        pytest.fail(f"no recorded results at {RESULTS}: run `make book` first (make test does)")
    return {c["claim"]: {**c, "scale": ch["scale"]} for ch in load_results(RESULTS) for c in ch["claims"]}


CLAIMS = list(catalogue())


def test_every_catalogued_claim_was_recorded():
    missing = [cid for cid in CLAIMS if cid not in _recorded()]
    assert not missing, f"claims no chapter recorded in this build: {missing}"


@pytest.mark.parametrize("cid", CLAIMS)
def test_verdict_follows_from_the_measurements_and_can_flip(cid):
    rec = _recorded().get(cid)
    if rec is None:
        pytest.fail(f"{cid} was not recorded")
    assert rejudge(rec) == rec["verdict"], f"{cid}: the recorded verdict does not follow from its measurements"
    if not rec["tests"]:
        assert rec["verdict"] == "not tested"
        return
    assert rejudge(rec, mutate=True) == "not reproduced", f"{cid}: the verdict cannot come out the other way"
    for t in rec["tests"]:
        m = t["measurement"]
        if m["kind"] != "exact" and rec["scale"] == "smoke":
            assert m["n"] >= MIN_SEEDS, f"{cid}/{t['name']} rests on {m['n']} seed(s)"
