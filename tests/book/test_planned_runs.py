"""Each chapter's ``planned_runs`` lists exactly the runs its notebook asked for in the built book (run after
``make book``; ``make test`` does). The book build sets ``WDLIB_RUN_LOG`` per chapter
(``_build/results/<chapter>.runs.txt``), where :func:`wdlib.runs.run_many` appends the key of every
configuration requested; the plan of ``python -m wdlib.plan`` rests on these lists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wdlib.plan import CHAPTERS
from wdlib.store import Store

pytestmark = pytest.mark.book

BUILD = Path(__file__).resolve().parents[2] / "_build"


def _record(chapter: str) -> dict:
    path = BUILD / "build_record.json"
    if not path.exists():
        pytest.fail(f"no build record at {path}: run `make book` first (make test does)")
    records = {Path(r["chapter"]).name: r for r in json.loads(path.read_text())}
    if chapter not in records:
        pytest.fail(f"the build at {BUILD} did not execute {chapter}")
    return records[chapter]


@pytest.mark.parametrize("chapter", list(CHAPTERS))
def test_planned_runs_are_the_runs_the_chapter_requested(chapter):
    record = _record(chapter)
    log = BUILD / "results" / f"{chapter}.runs.txt"
    if not log.exists():
        pytest.fail(f"no run log {log}: the book build sets WDLIB_RUN_LOG for every chapter")
    requested = set(log.read_text().split())
    module = CHAPTERS[chapter]
    s = module.setup(record["scale"], device=record.get("device", "cpu"), seed=record.get("seed", 0))
    planned = {c.key() for c in module.planned_runs(s, store=Store(BUILD / "store", create=False))}
    assert requested, f"{chapter} requested no run"
    assert planned == requested, (
        f"{chapter}: {len(requested - planned)} requested but not planned, {len(planned - requested)} planned "
        f"but not requested"
    )
