"""Verdicts on the book's claims, computed from data and recorded with their evidence.

A chapter states, for each claim of ``shared/CLAIMS.md``, the checks its rule asks for (each a named
boolean computed from measurements); :func:`verdict` turns them into ``"reproduced"`` (all pass),
``"partial"`` (some pass) or ``"not reproduced"`` (none pass). :class:`Ledger` writes every recorded
claim, with the numbers behind it, the scale, and the environment, to ``<chapter>.claims.json`` in
the results directory (``$WDLIB_RESULTS_DIR``, else the working directory: beside the executed
notebook). The book's claims-ledger page is generated from these files; nothing is written by hand.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["VERDICTS", "verdict", "ClaimResult", "Ledger", "environment", "load_results"]

VERDICTS: tuple[str, ...] = ("reproduced", "partial", "not reproduced")


def verdict(checks: Mapping[str, bool]) -> str:
    """``"reproduced"`` if every check passed, ``"partial"`` if some did, ``"not reproduced"`` if none."""
    if not checks:
        raise ValueError("checks must name at least one check")
    passed = [bool(v) for v in checks.values()]
    if all(passed):
        return "reproduced"
    return "partial" if any(passed) else "not reproduced"


def _plain(value: Any) -> Any:
    """Convert NumPy/torch scalars and arrays to JSON-ready Python values (non-finite floats to str)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _plain(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    return value


def environment() -> dict[str, Any]:
    """Versions and machine: what produced a result."""
    import torch

    from . import __version__

    env = {"wdlib": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": np.__version__, "platform": platform.platform(), "processor": platform.machine(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    return env


@dataclass
class ClaimResult:
    """One claim's verdict and the evidence behind it."""

    claim: str
    source: str
    statement: str
    checks: dict[str, bool]
    key_number: str
    evidence: dict[str, Any] = field(default_factory=dict)
    rule: str = ""
    verdict: str = ""

    def __post_init__(self) -> None:
        self.checks = {k: bool(v) for k, v in self.checks.items()}
        computed = verdict(self.checks)
        if self.verdict and self.verdict != computed:
            raise ValueError(f"verdict {self.verdict!r} does not follow from the checks ({computed!r})")
        self.verdict = computed

    def markdown(self) -> str:
        """The verdict as a Markdown paragraph: claim, verdict, key number, and each check."""
        checks = "; ".join(f"{k}: {'pass' if v else 'fail'}" for k, v in self.checks.items())
        rule = f" Rule: {self.rule}" if self.rule else ""
        return f"**{self.claim}: {self.verdict}.** {self.key_number}. Checks: {checks}.{rule}"

    def _repr_markdown_(self) -> str:
        return self.markdown()


class Ledger:
    """The claims of one chapter at one scale, written to ``<chapter>.claims.json`` as they are recorded."""

    def __init__(self, chapter: str, scale: str, directory: str | os.PathLike[str] | None = None) -> None:
        self.chapter = chapter
        self.scale = scale
        root = directory if directory is not None else os.environ.get("WDLIB_RESULTS_DIR", ".")
        self.path = Path(root) / f"{chapter}.claims.json"
        self.results: list[ClaimResult] = []

    def record(self, claim: str, *, source: str, statement: str, checks: Mapping[str, bool], key_number: str,
               evidence: Mapping[str, Any] | None = None, rule: str = "") -> ClaimResult:
        """Record a claim whose verdict follows from ``checks``; rewrite the JSON file; return the result."""
        result = ClaimResult(claim=claim, source=source, statement=statement, checks=dict(checks),
                             key_number=key_number, evidence=dict(evidence or {}), rule=rule)
        self.results = [r for r in self.results if r.claim != claim] + [result]
        self.save()
        return result

    def to_dict(self) -> dict[str, Any]:
        return {"chapter": self.chapter, "scale": self.scale, "environment": environment(),
                "claims": [_plain(asdict(r)) for r in self.results]}

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, self.path)
        return self.path

    def markdown(self) -> str:
        """A Markdown table of the recorded claims (for display in the notebook)."""
        rows = ["| claim | verdict | key number | checks |", "|---|---|---|---|"]
        for r in self.results:
            checks = ", ".join(f"{k}: {'pass' if v else 'fail'}" for k, v in r.checks.items())
            rows.append(f"| {r.claim} | **{r.verdict}** | {r.key_number} | {checks} |")
        return "\n".join(rows)

    def _repr_markdown_(self) -> str:
        return self.markdown()


def load_results(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every ``*.claims.json`` under ``directory``, parsed, sorted by chapter."""
    out = []
    for path in sorted(Path(directory).rglob("*.claims.json")):
        out.append(json.loads(path.read_text()))
    return sorted(out, key=lambda d: d["chapter"])
