"""Verdicts on the book's claims, computed from measurements by the rules of the claims catalogue.

The catalogue (``wdlib/catalogue/<chapter>.yml``, one file per chapter, loaded by :func:`catalogue`) is
the one place where a claim's statement, source, measure, rule, thresholds and revision history are
written. A chapter passes *measurements*, never thresholds or booleans::

    ledger = Ledger("02_ema_view", scale="smoke")
    ledger.judge("EMA-3", measured={"sim_rel_error": Measurement.exact(0.004),
                                    "net_slope": Measurement.from_seeds([0.51, 0.48, 0.50, 0.49, 0.52])},
                 sanity={"probe_identity": 1e-15}, key_number="...", evidence={...})

**Tests and sanity checks.** A claim's rule lists *tests* (a measured statistic against a threshold:
these can come out either way on data) and *sanity checks* (identities, probe checks, configuration
guards: true by construction when the code is right). Sanity checks are shown, never counted: a
failed one can only make a verdict ``"inconclusive"``, a passed one never helps it.

**Margins.** Each test's measurement carries its seed spread: the standard deviation of the statistic
over seeds (:meth:`Measurement.from_seeds`), for a statistic of the whole seed set its bootstrap
standard error over seeds times sqrt(n), the same footing (:meth:`Measurement.bootstrap`), or none for a deterministic
computation (:meth:`Measurement.exact`). The *margin* is the signed distance of the value from the
threshold, positive on the claim's side, in units of that spread. A test

* *passes* when its margin is at least 1 spread (an exact measurement: on the claim's side),
* *fails* when its margin is at most -1 spread (an exact measurement: on the other side),
* is *inconclusive* otherwise, and also when its value is undefined (NaN) or it rests on fewer than
  :data:`MIN_SEEDS` seeds.

**Verdict** (tests only; see :func:`verdict`): ``"not reproduced"`` if a core test fails;
``"inconclusive"`` if none fails but a core test is inconclusive (or a sanity check failed);
``"partial"`` if every core test passes but a secondary test does not; ``"reproduced"`` if every test
passes. A claim whose rule has no test (an identity shown for completeness) is ``"not tested"``.

Each chapter's :class:`Ledger` writes ``<chapter>.claims.json`` in the results directory
(``$WDLIB_RESULTS_DIR``, else the working directory). The book's ledger page is generated from the
catalogue and these files: every catalogued claim appears, as ``"not run"`` when no chapter recorded it.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ._version import __version__
from .stats import t_interval

__all__ = [
    "VERDICTS",
    "OUTCOMES",
    "MIN_SEEDS",
    "OPS",
    "Measurement",
    "Test",
    "Sanity",
    "Revision",
    "Claim",
    "catalogue",
    "claim",
    "judge",
    "judge_test",
    "verdict",
    "opposite",
    "rejudge",
    "measurement_text",
    "ClaimResult",
    "Ledger",
    "environment",
    "load_results",
    "CATALOGUE_DIR",
]

VERDICTS: tuple[str, ...] = ("reproduced", "partial", "inconclusive", "not reproduced", "not tested")
OUTCOMES: tuple[str, ...] = ("pass", "inconclusive", "fail")
MIN_SEEDS = 3
#: comparison operators a test may use, each with the claim's side of the threshold
OPS: dict[str, str] = {
    "<=": "value <= threshold",
    ">=": "value >= threshold",
    "abs<=": "|value| <= threshold",
    "abs>=": "|value| >= threshold",
}
CATALOGUE_DIR = Path(__file__).resolve().parent / "catalogue"
PARTS = ("core", "secondary")


# --------------------------------------------------------------------------------------------- measurements
@dataclass(frozen=True)
class Measurement:
    """A measured statistic with the spread that decides how far it may be trusted.

    ``kind`` is ``"seeds"`` (mean over per-seed values, spread = their standard deviation),
    ``"bootstrap"`` (a statistic of the whole seed set, spread = standard deviation of the statistic
    over bootstrap resamples of the seeds) or ``"exact"`` (a deterministic computation: no spread).
    """

    value: float
    spread: float | None = None
    n: int = 1
    kind: str = "exact"
    per_seed: tuple[float, ...] | None = None
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("seeds", "bootstrap", "exact"):
            raise ValueError(f"kind must be 'seeds', 'bootstrap' or 'exact', got {self.kind!r}")

    @classmethod
    def exact(cls, value: Any) -> Measurement:
        """A deterministic measurement (a closed form, a simulation with fixed draws): no seed spread."""
        return cls(value=float(value), kind="exact")

    @classmethod
    def from_seeds(cls, values: Iterable[Any], level: float = 0.95) -> Measurement:
        """Per-seed values: the value is their mean, the spread their standard deviation (ddof 1), the
        interval the two-sided Student-t interval of the mean. NaN seeds are kept in ``per_seed`` and make
        the value NaN (an undefined statistic in any seed leaves the test inconclusive)."""
        v = np.asarray(list(values), dtype=np.float64).ravel()
        if v.size == 0:
            raise ValueError("from_seeds needs at least one value")
        mean = float(v.mean())
        spread = float(v.std(ddof=1)) if v.size > 1 else None
        interval = None
        if v.size > 1 and np.all(np.isfinite(v)):
            _, lo, hi = t_interval(v, level)
            interval = (lo, hi)
        return cls(
            value=mean, spread=spread, n=int(v.size), kind="seeds", per_seed=tuple(map(float, v)), interval=interval
        )

    @classmethod
    def bootstrap(
        cls,
        statistic: Any,
        units: Sequence[Any],
        *,
        resamples: int = 1000,
        seed: int = 0,
        level: float = 0.95,
        per_seed: Iterable[Any] | None = None,
    ) -> Measurement:
        """``statistic(units)`` on all seeds, with a seed spread and the percentile interval of
        ``statistic(resample)`` over ``resamples`` resamples of the seeds (with replacement).

        The standard deviation of the resampled statistic is its standard error over the ``n`` seeds; the
        spread reported is that times ``sqrt(n)``, the seed-equivalent spread (for a mean of per-seed
        values it is their standard deviation, as :meth:`from_seeds` reports), so margins from a bootstrap
        and from per-seed values stand on one footing. ``units`` is a list with one entry per seed;
        ``statistic`` takes such a list. Resamples on which the statistic is undefined (NaN) are counted:
        if more than 5% are, the spread is NaN and a test on it is inconclusive. ``per_seed`` (optional) is
        reported beside, e.g. the statistic of each seed.
        """
        units = list(units)
        if len(units) < 2:
            raise ValueError("bootstrap needs at least two seeds")
        value = float(statistic(units))
        rng = np.random.default_rng(seed)
        draws = np.array(
            [float(statistic([units[i] for i in rng.integers(0, len(units), len(units))])) for _ in range(resamples)]
        )
        finite = draws[np.isfinite(draws)]
        if finite.size < 0.95 * resamples:
            spread, interval = float("nan"), None
        else:
            spread = float(finite.std(ddof=1)) * math.sqrt(len(units))
            a = (1 - level) / 2
            interval = (float(np.quantile(finite, a)), float(np.quantile(finite, 1 - a)))
        ps = tuple(map(float, per_seed)) if per_seed is not None else None
        return cls(value=value, spread=spread, n=len(units), kind="bootstrap", per_seed=ps, interval=interval)

    def to_dict(self) -> dict[str, Any]:
        return _plain(
            {
                "value": self.value,
                "spread": self.spread,
                "n": self.n,
                "kind": self.kind,
                "per_seed": self.per_seed,
                "interval": self.interval,
            }
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        def num(x: Any) -> float | None:
            return None if x is None else float(x)

        ps = d.get("per_seed")
        iv = d.get("interval")
        return cls(
            value=float(d["value"]),
            spread=num(d.get("spread")),
            n=int(d.get("n", 1)),
            kind=str(d.get("kind", "exact")),
            per_seed=None if ps is None else tuple(float(x) for x in ps),
            interval=None if iv is None else (float(iv[0]), float(iv[1])),
        )


def _as_measurement(x: Any) -> Measurement:
    if isinstance(x, Measurement):
        return x
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(
            "a test takes a measured number, not a boolean: pass the statistic and let the "
            "catalogue's threshold judge it"
        )
    if isinstance(x, (int, float, np.integer, np.floating)) or (hasattr(x, "ndim") and x.ndim == 0):
        return Measurement.exact(float(x))
    raise TypeError(f"a measurement must be a Measurement or a number, got {type(x).__name__}")


# ------------------------------------------------------------------------------------------------ catalogue
@dataclass(frozen=True)
class _Comparison:
    """``measured[name] op threshold``: the shared part of a counted test and a sanity check."""

    name: str
    label: str
    op: str
    threshold: float

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"{self.name!r}: op must be one of {', '.join(OPS)}, got {self.op!r}")

    def distance(self, value: float) -> float:
        """Signed distance of ``value`` from the threshold, positive on the claim's side."""
        t = self.threshold
        return {"<=": t - value, ">=": value - t, "abs<=": t - abs(value), "abs>=": abs(value) - t}[self.op]

    def describe(self, units: str = "") -> str:
        units = f" {units}" if units else ""
        return OPS[self.op].replace("value", self.label).replace("threshold", f"{self.threshold:g}{units}")


@dataclass(frozen=True)
class Test(_Comparison):
    """One counted test of a claim: ``measured[name]`` against ``threshold`` by ``op``."""

    __test__ = False  # not a pytest test class

    part: str = "core"
    units: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.part not in PARTS:
            raise ValueError(f"test {self.name!r}: part must be 'core' or 'secondary', got {self.part!r}")

    def describe(self, units: str = "") -> str:
        return super().describe(units or self.units)


@dataclass(frozen=True)
class Sanity(_Comparison):
    """A sanity check: an identity or guard, shown but never counted. ``measured[name] op threshold``."""

    def holds(self, value: float) -> bool:
        return bool(np.isfinite(value)) and self.distance(value) >= 0


@dataclass(frozen=True)
class Revision:
    """One change of a claim's rule: when, what, why, and whether it was made after seeing data."""

    date: str
    change: str
    why: str
    after_data: bool


@dataclass(frozen=True)
class Claim:
    """A catalogued claim."""

    id: str
    chapter: str
    sources: tuple[str, ...]
    statement: str
    measure: str
    rule: str
    tests: tuple[Test, ...]
    sanity: tuple[Sanity, ...] = ()
    seeds: str = ""
    untested: str = ""
    revisions: tuple[Revision, ...] = ()

    def test(self, name: str) -> Test:
        for t in self.tests:
            if t.name == name:
                return t
        raise KeyError(f"{self.id} has no test {name!r}; its tests are {[t.name for t in self.tests]}")

    def rule_markdown(self, revisions: bool = True) -> str:
        """The claim's rule as a Markdown paragraph (what a chapter shows before its measurements); with
        ``revisions`` it ends with the changes made after seeing data."""
        lines = [f"**Rule for {self.id}** (from the claims catalogue). {self.rule.strip()}"]
        if self.tests:
            lines.append("")
            lines.append("Counted tests (pass at a margin of at least one seed spread):")
            lines.append("")
            for t in self.tests:
                lines.append(f"- {t.part}: {t.describe()}")
        else:
            lines.append("")
            lines.append(f"No counted test: {self.untested.strip()}")
        if self.sanity:
            lines.append("")
            lines.append("Sanity checks (shown, never counted): " + "; ".join(s.describe() for s in self.sanity) + ".")
        if self.seeds:
            lines.append("")
            lines.append(f"Seeds: {self.seeds.strip()}")
        late = [r for r in self.revisions if r.after_data] if revisions else []
        if late:
            lines.append("")
            lines.append(
                "Revised after seeing data: "
                + "; ".join(f"{r.date}: {r.change.strip().rstrip('.')} ({r.why.strip().rstrip('.')})" for r in late)
                + "."
            )
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.rule_markdown()


def _claim_from_yaml(chapter: str, d: Mapping[str, Any], path: Path) -> Claim:
    where = f"{path.name}: claim {d.get('id', '?')}"
    required = ("id", "sources", "statement", "measure", "rule")
    missing = [k for k in required if k not in d]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    rule = d["rule"]
    if not isinstance(rule, Mapping) or "text" not in rule:
        raise ValueError(f"{where}: rule must be a mapping with 'text', 'tests' and optionally 'sanity'")
    tests = tuple(
        Test(
            name=str(t["name"]),
            label=str(t["label"]),
            op=str(t["op"]),
            threshold=float(t["threshold"]),
            part=str(t.get("part", "core")),
            units=str(t.get("units", "")),
        )
        for t in rule.get("tests") or []
    )
    sanity = tuple(
        Sanity(name=str(s["name"]), label=str(s["label"]), op=str(s["op"]), threshold=float(s["threshold"]))
        for s in rule.get("sanity") or []
    )
    names = [t.name for t in tests] + [s.name for s in sanity]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: test and sanity names must be unique, got {names}")
    if not tests and not rule.get("untested"):
        raise ValueError(f"{where}: a claim without tests must say why under rule.untested")
    if tests and not any(t.part == "core" for t in tests):
        raise ValueError(f"{where}: at least one test must be part 'core'")
    revisions = tuple(
        Revision(date=str(r["date"]), change=str(r["change"]), why=str(r["why"]), after_data=bool(r["after_data"]))
        for r in d.get("revisions") or []
    )
    sources = d["sources"]
    sources = (sources,) if isinstance(sources, str) else tuple(str(s) for s in sources)
    return Claim(
        id=str(d["id"]),
        chapter=chapter,
        sources=sources,
        statement=str(d["statement"]).strip(),
        measure=str(d["measure"]).strip(),
        rule=str(rule["text"]).strip(),
        tests=tests,
        sanity=sanity,
        seeds=str(d.get("seeds", "")).strip(),
        untested=str(rule.get("untested", "")).strip(),
        revisions=revisions,
    )


@lru_cache(maxsize=4)
def _load(directory: str) -> dict[str, Claim]:
    out: dict[str, Claim] = {}
    for path in sorted(Path(directory).glob("*.yml")):
        doc = yaml.safe_load(path.read_text()) or {}
        chapter = str(doc.get("chapter", path.stem))
        for d in doc.get("claims") or []:
            c = _claim_from_yaml(chapter, d, path)
            if c.id in out:
                raise ValueError(f"claim {c.id} is catalogued twice ({path.name} and {out[c.id].chapter})")
            out[c.id] = c
    return out


def catalogue(directory: str | os.PathLike[str] | None = None) -> dict[str, Claim]:
    """Every catalogued claim by id, in chapter order (files sorted by name)."""
    return dict(_load(str(directory or CATALOGUE_DIR)))


def claim(claim_id: str, directory: str | os.PathLike[str] | None = None) -> Claim:
    """One catalogued claim; a ``KeyError`` lists the known ids."""
    cat = catalogue(directory)
    if claim_id not in cat:
        raise KeyError(f"claim {claim_id!r} is not in the catalogue; known: {', '.join(cat)}")
    return cat[claim_id]


# ------------------------------------------------------------------------------------------------- judging
def judge_test(test: Test, m: Measurement) -> dict[str, Any]:
    """Outcome of one test: ``pass``/``fail``/``inconclusive``, the margin in spreads and the reason."""
    value = m.value
    row: dict[str, Any] = {
        "name": test.name,
        "label": test.label,
        "part": test.part,
        "op": test.op,
        "threshold": test.threshold,
        "measurement": m.to_dict(),
        "rule": test.describe(),
    }
    if m.per_seed is not None:
        row["seeds_passing"] = int(sum(1 for v in m.per_seed if np.isfinite(v) and test.distance(v) >= 0))
    if not np.isfinite(value):
        row.update(outcome="inconclusive", margin=None, reason="the statistic is undefined (NaN)")
        return row
    d = test.distance(value)
    if m.kind == "exact":
        row.update(
            outcome="pass" if d >= 0 else "fail",
            margin="exact" if d >= 0 else "-exact",
            reason="deterministic measurement",
        )
        return row
    if m.n < MIN_SEEDS:
        row.update(outcome="inconclusive", margin=None, reason=f"{m.n} seed(s), fewer than {MIN_SEEDS}")
        return row
    s = m.spread
    if s is None or not np.isfinite(s):
        row.update(outcome="inconclusive", margin=None, reason="the seed spread is undefined")
        return row
    if s == 0:
        margin = math.copysign(math.inf, d) if d != 0 else 0.0
    else:
        margin = d / s
    outcome = "pass" if margin >= 1 else "fail" if margin <= -1 else "inconclusive"
    row.update(
        outcome=outcome,
        margin=margin,
        reason=f"margin {margin:+.2f} seed spreads" + ("" if outcome != "inconclusive" else " (under 1)"),
    )
    return row


def verdict(tests: Sequence[Mapping[str, Any]], sanity_ok: bool = True) -> str:
    """The verdict from judged tests (rows of :func:`judge_test`).

    ``"not reproduced"`` if a core test fails; else ``"inconclusive"`` if a core test is inconclusive or
    a sanity check failed; else ``"partial"`` if a secondary test fails or is inconclusive; else
    ``"reproduced"``. No tests: ``"not tested"``.
    """
    if not tests:
        return "not tested"
    core = [t["outcome"] for t in tests if t["part"] == "core"]
    second = [t["outcome"] for t in tests if t["part"] == "secondary"]
    if not core:
        raise ValueError("a claim's tests must include a core test")
    if "fail" in core:
        return "not reproduced"
    if "inconclusive" in core or not sanity_ok:
        return "inconclusive"
    if any(o != "pass" for o in second):
        return "partial"
    return "reproduced"


def opposite(test: Test, m: Measurement) -> Measurement:
    """``m`` moved to the other side of ``test``'s threshold by its own distance plus two spreads: the
    measurement a world where the claim is false would give (used to check that a verdict can flip)."""
    v = m.value if np.isfinite(m.value) else test.threshold
    s = m.spread if (m.spread is not None and np.isfinite(m.spread) and m.spread > 0) else 0.0
    push = abs(test.distance(v)) + 2 * s + 1e-9 * max(1.0, abs(test.threshold))
    t = test.threshold
    if test.op == "<=":
        new = t + push
    elif test.op == ">=":
        new = t - push
    elif test.op == "abs<=":
        new = abs(t) + push
    else:  # abs>=
        new = 0.0 if t > 0 else float("nan")
    per_seed = None if m.per_seed is None else tuple(new for _ in m.per_seed)
    n = max(m.n, MIN_SEEDS) if m.kind != "exact" else m.n
    return Measurement(
        value=new, spread=m.spread if m.kind != "exact" else None, n=n, kind=m.kind, per_seed=per_seed, interval=None
    )


# ------------------------------------------------------------------------------------------------- results
def _plain(value: Any) -> Any:
    """Convert NumPy/torch scalars and arrays to JSON-ready Python values (non-finite floats to str)."""
    if isinstance(value, Measurement):
        return value.to_dict()
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

    env = {
        "wdlib": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return env


def _fmt(x: Any) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    x = float(x)
    if not np.isfinite(x):
        return str(x)
    return f"{x:.3g}"


def _esc(text: Any) -> str:
    """Text for one Markdown table cell: pipes escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _margin_text(row: Mapping[str, Any]) -> str:
    m = row.get("margin")
    if m is None:
        return "n/a"
    if isinstance(m, str):
        return m
    return f"{m:+.2f}" if np.isfinite(m) else ("+inf" if m > 0 else "-inf")


def measurement_text(md: Mapping[str, Any]) -> str:
    """``value ± spread [lo, hi] (n seeds, kind)`` for a measurement dictionary."""
    m = Measurement.from_dict(md)
    text = _fmt(m.value)
    if m.kind == "exact":
        return text + " (exact)"
    if m.spread is not None:
        text += f" ± {_fmt(m.spread)}"
    if m.interval is not None:
        text += f" [{_fmt(m.interval[0])}, {_fmt(m.interval[1])}]"
    return text + f" ({m.n} seeds, {'bootstrap' if m.kind == 'bootstrap' else 'seed mean'})"


@dataclass
class ClaimResult:
    """One claim's judged tests, sanity checks, verdict and the evidence behind them."""

    claim: str
    tests: list[dict[str, Any]]
    sanity: list[dict[str, Any]]
    verdict: str
    key_number: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _plain(
            {
                "claim": self.claim,
                "verdict": self.verdict,
                "key_number": self.key_number,
                "tests": self.tests,
                "sanity": self.sanity,
                "evidence": self.evidence,
            }
        )

    def markdown(self) -> str:
        """The verdict as Markdown: claim, verdict, key number, each test with its margin, sanity checks."""
        lines = [
            f"**{self.claim}: {self.verdict}.** {self.key_number}",
            "",
            "| test | part | measured | threshold | margin (spreads) | outcome |",
            "|---|---|---|---|---|---|",
        ]
        for t in self.tests:
            seeds = (
                f", {t['seeds_passing']}/{t['measurement']['n']} seeds on the claim's side"
                if "seeds_passing" in t
                else ""
            )
            lines.append(
                f"| {_esc(t['label'])} | {t['part']} | {measurement_text(t['measurement'])}{seeds} | "
                f"{_esc(t['rule'])} | {_margin_text(t)} | **{t['outcome']}** |"
            )
        if not self.tests:
            lines = lines[:2]
        if self.sanity:
            lines += [
                "",
                "Sanity checks (not counted): "
                + "; ".join(
                    f"{s['label']} = {_fmt(s['value'])} ({'holds' if s['holds'] else 'FAILS'})" for s in self.sanity
                )
                + ".",
            ]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.markdown()


def _sanity_value(x: Any) -> float:
    if isinstance(x, (bool, np.bool_)):
        return 1.0 if x else 0.0
    if isinstance(x, Measurement):
        return x.value
    return float(x)


def judge(
    c: Claim, measured: Mapping[str, Any], sanity: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Judge claim ``c`` on ``measured`` (one entry per catalogued test) and ``sanity`` values."""
    names = {t.name for t in c.tests}
    extra, absent = set(measured) - names, names - set(measured)
    if extra or absent:
        raise ValueError(
            f"{c.id}: measured must name exactly the catalogued tests {sorted(names)}; "
            f"missing {sorted(absent)}, unknown {sorted(extra)}"
        )
    sanity = dict(sanity or {})
    snames = {s.name for s in c.sanity}
    if set(sanity) != snames:
        raise ValueError(
            f"{c.id}: sanity must name exactly the catalogued sanity checks {sorted(snames)}; got {sorted(sanity)}"
        )
    rows = [judge_test(t, _as_measurement(measured[t.name])) for t in c.tests]
    srows = []
    for s in c.sanity:
        v = _sanity_value(sanity[s.name])
        srows.append({"name": s.name, "label": s.label, "value": v, "rule": s.describe(), "holds": s.holds(v)})
    return rows, srows, verdict(rows, all(r["holds"] for r in srows))


class Ledger:
    """The claims of one chapter at one scale, written to ``<chapter>.claims.json`` as they are judged."""

    def __init__(
        self,
        chapter: str,
        scale: str,
        directory: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        catalogue_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.chapter = chapter
        self.scale = scale
        self.seed = seed
        self.catalogue_dir = catalogue_dir
        root = directory if directory is not None else os.environ.get("WDLIB_RESULTS_DIR", ".")
        self.path = Path(root) / f"{chapter}.claims.json"
        self.results: list[ClaimResult] = []

    def claim(self, claim_id: str) -> Claim:
        c = claim(claim_id, self.catalogue_dir)
        if c.chapter != self.chapter:
            raise ValueError(f"{claim_id} belongs to chapter {c.chapter!r}, not {self.chapter!r}")
        return c

    def rule(self, claim_id: str) -> Claim:
        """The catalogued claim (displays as its rule in a notebook)."""
        return self.claim(claim_id)

    def judge(
        self,
        claim_id: str,
        *,
        measured: Mapping[str, Any],
        sanity: Mapping[str, Any] | None = None,
        key_number: str = "",
        evidence: Mapping[str, Any] | None = None,
    ) -> ClaimResult:
        """Judge ``claim_id`` by the catalogue's rule on ``measured``; record it; rewrite the JSON file."""
        c = self.claim(claim_id)
        rows, srows, v = judge(c, measured, sanity)
        result = ClaimResult(
            claim=claim_id, tests=rows, sanity=srows, verdict=v, key_number=key_number, evidence=dict(evidence or {})
        )
        self.results = [r for r in self.results if r.claim != claim_id] + [result]
        self.save()
        return result

    def to_dict(self) -> dict[str, Any]:
        return {
            "chapter": self.chapter,
            "scale": self.scale,
            "seed": self.seed,
            "environment": environment(),
            "claims": [r.to_dict() for r in self.results],
        }

    def save(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2))
        os.replace(tmp, self.path)
        return self.path

    def markdown(self) -> str:
        """A Markdown table of the judged claims (for display at the end of a chapter)."""
        rows = ["| claim | verdict | tests passed | key number |", "|---|---|---|---|"]
        for r in self.results:
            passed = sum(t["outcome"] == "pass" for t in r.tests)
            rows.append(f"| {r.claim} | **{r.verdict}** | {passed} of {len(r.tests)} | {r.key_number} |")
        return "\n".join(rows)

    def _repr_markdown_(self) -> str:
        return self.markdown()


def rejudge(recorded: Mapping[str, Any], directory: str | os.PathLike[str] | None = None, mutate: bool = False) -> str:
    """Recompute a recorded claim's verdict from its recorded measurements and the catalogue; with
    ``mutate`` every test's measurement is first moved to the claim's wrong side (:func:`opposite`)."""
    c = claim(recorded["claim"], directory)
    measured = {}
    for row in recorded["tests"]:
        m = Measurement.from_dict(row["measurement"])
        measured[row["name"]] = opposite(c.test(row["name"]), m) if mutate else m
    sanity = {s["name"]: s["value"] for s in recorded.get("sanity", [])}
    return judge(c, measured, sanity)[2]


def load_results(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every ``*.claims.json`` under ``directory``, parsed, sorted by chapter."""
    out = []
    for path in sorted(Path(directory).rglob("*.claims.json")):
        out.append(json.loads(path.read_text()))
    return sorted(out, key=lambda d: d["chapter"])
