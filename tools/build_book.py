"""Execute every chapter with papermill, generate the ledger and status pages, build the HTML book.

    python tools/build_book.py [--scale smoke|full|test] [--device auto|cpu|cuda] [--out _build]

Layout of the build tree (all of it a build product, ignored by git)::

    _build/src/          a copy of the book's sources with the *executed* notebooks in notebooks/
    _build/results/      <chapter>.claims.json written by each chapter (wdlib.claims)
    _build/store/        the chapters' training runs (wdlib.runs), made afresh by every build
    _build/html/         the built book (Jupyter Book 1, its own execution off, warnings as errors)

Every chapter runs even when an earlier one fails; the build then fails listing every failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from wdlib.config import SCALES  # noqa: E402  (the one vocabulary of scales: a run's and a chapter's)

sys.path.insert(0, str(ROOT / "tools"))
import api_pages  # noqa: E402  (the API reference: one page per public wdlib module)
from site_config import built_config, load_site, stale, toc_files  # noqa: E402  (where the book lives, set once)


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return out.stdout.strip() + ("+local changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def kernel_env(results: Path) -> dict[str, str]:
    """The environment variables the chapters' kernels get (papermill's kernels inherit this process's)."""
    return {
        "WDLIB_RESULTS_DIR": str(results),
        "WDLIB_STORE": str(results.parent / "store"),  # the chapters' runs (wiped by main())
        # no progress bars: an executed copy would keep widget outputs without their state
        "WDLIB_PROGRESS": "0",
        # no interactive widgets either: a page has no kernel behind it, so it shows what the widget starts with
        # and a note (wdlib.plotting.show_interactive)
        "WDLIB_STATIC": "1",
        # idle OpenMP threads sleep instead of spinning: a kernel's torch threads spun while the cores were busy
        # with training workers (chapter 1 beside chapter 2: 445 s and 456 CPU s spinning, 112 s and 107 CPU s
        # passive; chapter 2 beside it 425 s -> 340 s). How threads wait changes no number.
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "MPLBACKEND": os.environ.get("MPLBACKEND", "module://matplotlib_inline.backend_inline"),
    }


def run_log_env(results: Path, notebook: str) -> dict[str, str]:
    """``WDLIB_RUN_LOG`` for one chapter's kernel: ``<results>/<notebook stem>.runs.txt``, emptied, where
    :func:`wdlib.runs.run_many` appends the key of every configuration the chapter requests
    (tests/book/test_planned_runs.py compares them with the chapter's ``planned_runs``)."""
    log = results / f"{Path(notebook).name}.runs.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    return {"WDLIB_RUN_LOG": str(log)}


def _papermill(nb: str, out: Path, scale: str, device: str, seed: int) -> list[str]:
    """The command that executes chapter ``nb`` into ``out`` (papermill's CLI in this Python)."""
    return [
        sys.executable,
        "-m",
        "papermill",
        str(ROOT / f"{nb}.ipynb"),
        str(out),
        *("-p", "scale", scale, "-p", "device", device, "-p", "seed", str(seed)),
        *("--cwd", str(out.parent), "--kernel", "python3", "--no-progress-bar", "--no-log-output"),
    ]


def _execute_one(nb: str, src: Path, results: Path, scale: str, device: str, seed: int) -> dict:
    """Execute one chapter in its own papermill process (its kernel's environment: :func:`kernel_env` and
    :func:`run_log_env`); its wall time, and its CPU time with the kernel's and the worker processes'."""
    out = src / f"{nb}.ipynb"
    out.parent.mkdir(parents=True, exist_ok=True)
    log = results / f"{Path(nb).name}.papermill.log"
    env = {**os.environ, **kernel_env(results), **run_log_env(results, nb)}
    print(f"[book] executing {nb}.ipynb at scale={scale}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as stream:
        proc = subprocess.Popen(_papermill(nb, out, scale, device, seed), env=env, stdout=stream, stderr=stream)
        _, status, usage = os.wait4(proc.pid, 0)  # the rusage of papermill and every process it waited for
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    error = None
    if proc.returncode != 0:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
        error = f"papermill exited {proc.returncode}: {lines[-1] if lines else 'no output'} (log: {log})"
    print(f"[book] {nb}: {'FAILED ' + error if error else 'ok'} in {seconds:.1f} s ({cpu:.0f} CPU s)", flush=True)
    return {
        "chapter": nb,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "scale": scale,
        "seed": seed,
        "device": device,
        "error": error,
    }


def execute(
    notebooks: list[str], src: Path, results: Path, scale: str, device: str, seed: int = 0, lanes: int = 1
) -> list[dict]:
    """Execute every chapter with papermill into ``src``, ``lanes`` chapters at a time (each in its own process,
    in ``_toc.yml``'s order); return one record per chapter, in that order.

    Two lanes on two cores: a chapter's own kernel works alone between its batches of training runs (figures,
    probes, judging), and another chapter's runs fill that time. The numbers do not depend on it: every run is
    seeded, and each process keeps the thread count it has when chapters run one at a time. Measured on the
    2-core CPU (2026-12-01): all six chapters in 3,057 s in two lanes; the first four took 1,852 s, against
    about 1,900-2,100 s one at a time on the same machine, so the gain is small and rests on chapters 4 and 5
    (not timed alone that day).
    """
    from concurrent.futures import ThreadPoolExecutor

    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise ValueError(f"lanes must be an integer >= 1, got {lanes!r}")
    with ThreadPoolExecutor(max_workers=lanes) as pool:
        futures = [pool.submit(_execute_one, nb, src, results, scale, device, seed) for nb in notebooks]
        return [f.result() for f in futures]


def _cell(text: object) -> str:
    sys.path.insert(0, str(ROOT))
    from wdlib.claims import _esc

    return _esc(text)


def _source_links(sources: tuple[str, ...], prefix: str) -> str:
    return ", ".join(f"[{k}]({prefix}references.md#{k})" for k in sources)


def _recorded(results: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Recorded claims by id, and each chapter's record (scale, seed) by chapter name."""
    from wdlib.claims import load_results

    by_claim, by_chapter = {}, {}
    for ch in load_results(results):
        by_chapter[ch["chapter"]] = ch
        for c in ch["claims"]:
            by_claim[c["claim"]] = {**c, "_chapter": ch}
    return by_claim, by_chapter


def _margin_value(m: object) -> float:
    """A recorded margin as a number: None (undefined) -> NaN, "exact" -> +inf, "-exact" -> -inf."""
    if m is None:
        return float("nan")
    if isinstance(m, str):
        return {"exact": float("inf"), "-exact": float("-inf")}.get(
            m, float(m) if m.lstrip("+-") in ("inf", "nan") else float("nan")
        )
    return float(m)


def _weakest(tests: list[dict]) -> str:
    """The smallest margin among the core tests: what decides how firm the verdict is."""
    margins = [_margin_value(t.get("margin")) for t in tests if t["part"] == "core"]
    if not margins:
        return "n/a"
    if any(m != m for m in margins):
        return "undefined"
    w = min(margins)
    return {float("inf"): "exact", float("-inf"): "exact (fails)"}.get(w, f"{w:+.2f}")


def _seed_counts(tests: list[dict]) -> str:
    ns = sorted({int(t["measurement"]["n"]) for t in tests if t["measurement"]["kind"] != "exact"})
    return ", ".join(map(str, ns)) if ns else "exact"


def ledger_page(results: Path, catalogue_dir: Path | None = None) -> str:
    """The claims-ledger page: every catalogued claim, its recorded tests (or "not run"), rule and history."""
    sys.path.insert(0, str(ROOT))
    from wdlib.claims import ClaimResult, catalogue

    cat = catalogue(catalogue_dir)
    by_claim, _ = _recorded(results)
    lines = [
        "# Claims ledger",
        "",
        "Every claim of the book's catalogue (`wdlib/catalogue/`), with the verdict its chapter computed in this",
        "build from its own data by the catalogued rule. A verdict comes from counted *tests* only; *sanity",
        "checks* (identities, probe checks) are shown but never counted. The *margin* is the distance of a",
        "test's statistic from its threshold in units of its seed spread (positive on the claim's side); a test",
        "passes at a margin of at least 1, fails at -1 or below, and is inconclusive in between. The weakest",
        "margin below is the smallest among the claim's core tests. This page is generated at build time; a",
        "claim whose chapter did not record it is listed as **not run**.",
        "",
        "| claim | chapter (scale, base seed) | verdict | weakest core margin | seeds | statement |",
        "|---|---|---|---|---|---|",
    ]
    counts: dict[str, int] = {}
    for cid, c in cat.items():
        rec = by_claim.get(cid)
        link = f"[{c.chapter}](../notebooks/{c.chapter}.ipynb)"
        if rec is None:
            v, margin, seeds, where = "not run", "", "", link
        else:
            ch = rec["_chapter"]
            v, margin, seeds = rec["verdict"], _weakest(rec["tests"]), _seed_counts(rec["tests"])
            where = f"{link} ({ch['scale']}, {ch.get('seed', 'n/a')})"
        counts[v] = counts.get(v, 0) + 1
        lines.append(f"| [{cid}](#{cid.lower()}) | {where} | **{v}** | {margin} | {seeds} | {_cell(c.statement)} |")
    lines += ["", "Totals: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" ({len(cat)} claims).", ""]
    for cid, c in cat.items():
        rec = by_claim.get(cid)
        lines += [
            f"## {cid}",
            "",
            f"**Claim** ({_source_links(c.sources, '')}). {c.statement}",
            "",
            f"**Measured.** {c.measure}",
            "",
            c.rule_markdown(revisions=False),
            "",
        ]
        if rec is None:
            lines += ["**Not run**: no chapter recorded this claim in this build (see the status page).", ""]
        else:
            r = ClaimResult(
                claim=cid,
                tests=rec["tests"],
                sanity=rec["sanity"],
                verdict=rec["verdict"],
                key_number=rec["key_number"],
            )
            lines += ["**Recorded in this build.**", "", r.markdown(), ""]
        if c.revisions:
            lines += [
                "**Revisions of the rule.**",
                "",
                "| date | change | why | after seeing data |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {r.date} | {_cell(r.change)} | {_cell(r.why)} | {'yes' if r.after_data else 'no'} |"
                for r in c.revisions
            ]
            lines.append("")
    return "\n".join(lines) + "\n"


def claims_table(catalogue_dir: Path | None = None) -> str:
    """The introduction's table of claims, generated from the catalogue."""
    sys.path.insert(0, str(ROOT))
    from wdlib.claims import catalogue

    lines = ["| claim | chapter | source | statement | tests (core + secondary) |", "|---|---|---|---|---|"]
    for cid, c in catalogue(catalogue_dir).items():
        core = sum(t.part == "core" for t in c.tests)
        tests = f"{core} + {len(c.tests) - core}" if c.tests else "none: " + c.untested.split(".")[0]
        lines.append(
            f"| [{cid}](ledger.md#{cid.lower()}) | [{c.chapter}](../notebooks/{c.chapter}.ipynb) | "
            f"{_source_links(c.sources, '')} | {_cell(c.statement)} | {_cell(tests)} |"
        )
    return "\n".join(lines) + "\n"


def revisions_list(catalogue_dir: Path | None = None) -> str:
    """Every rule revision made after seeing data, generated from the catalogue's logs."""
    sys.path.insert(0, str(ROOT))
    from wdlib.claims import catalogue

    rows = [(r.date, cid, r) for cid, c in catalogue(catalogue_dir).items() for r in c.revisions if r.after_data]
    if not rows:
        return "No rule of the catalogue was revised after seeing data.\n"
    lines = ["| date | claim | change | why |", "|---|---|---|---|"]
    lines += [
        f"| {d} | [{cid}](ledger.md#{cid.lower()}) | {_cell(r.change)} | {_cell(r.why)} |"
        for d, cid, r in sorted(rows, key=lambda x: (x[0], x[1]))
    ]
    return "\n".join(lines) + "\n"


def fill_intro(text: str, catalogue_dir: Path | None = None) -> str:
    """Replace the introduction's generated-content markers with the catalogue's table and revisions."""
    for marker, content in (
        ("<!-- claims-table -->", claims_table(catalogue_dir)),
        ("<!-- revisions -->", revisions_list(catalogue_dir)),
    ):
        if marker not in text:
            raise ValueError(f"book/intro.md lacks the marker {marker}")
        text = text.replace(marker, content)
    return text


def bf16_speed_row() -> str:
    """The status page's row on bfloat16: the build machine's measured matmul throughput and whether bfloat16
    counted as fast (:func:`wdlib.precision.fast_bf16`; chapter 5 decides its precision by it)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from wdlib.precision import FAST_BF16_RATIO, bf16_matmul_speed, fast_bf16

    m = bf16_matmul_speed("cpu")
    cells = [
        f"CPU ({torch.get_num_threads()} threads), {m['n']}x{m['n']} matmul: {m['float32_gflops']:.1f} GFLOP/s in "
        f"float32, {m['bfloat16_gflops']:.1f} in bfloat16 ({m['ratio']:.2f}x): bfloat16 counted as "
        f"**{'fast' if m['fast'] else 'slow'}** (fast: at least {FAST_BF16_RATIO:g}x float32)"
    ]
    if torch.cuda.is_available():
        cells.append(
            f"CUDA: bfloat16 counted as **{'fast' if fast_bf16('cuda') else 'slow'}** (torch.cuda.is_bf16_supported())"
        )
    return "| bfloat16 | " + "; ".join(cells) + " |"


def run_counts(results: Path | None, chapter: str) -> str:
    """What a chapter trained, from its run log (``<chapter>.runs.txt``, :func:`run_log_env`) and the results the
    store filed (``results/../store/results/<key>.json``): ``"N (P packed, in K packs)"``, or ``"-"`` without a log.
    Runs the chapter found already stored count as trained by whichever way they were."""
    log = results / f"{chapter}.runs.txt" if results is not None else None
    if log is None or not log.exists():
        return "-"
    keys = list(dict.fromkeys(k for k in log.read_text().split() if k))
    packs, packed = set(), 0
    for key in keys:
        path = results.parent / "store" / "results" / f"{key}.json"  # type: ignore[union-attr]
        info = json.loads(path.read_text()).get("summary", {}).get("info", {}) if path.exists() else {}
        pack = info.get("pack") or {}
        if pack.get("members", 1) > 1:
            packed += 1
            packs.add(pack.get("key"))
    return f"{len(keys)} ({packed} packed, in {len(packs)} packs)"


def _cpu(record: dict) -> str:
    cpu = record.get("cpu_seconds")
    return "" if cpu is None else f"{cpu:.0f} s"


BENCHMARK_RESULTS = ROOT / "benchmarks" / "results"


def _machine_line(machine: dict) -> str:
    """``key value; ...`` for every entry the benchmark recorded (device or CPU, threads, torch, date, ...)."""
    return "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in machine.items() if v not in (None, ""))


def _optim_step_table(rows: list[dict]) -> list[str]:
    """One row per optimizer and rule, one column per size and dtype: wdlib's step time over torch's."""
    columns = list(dict.fromkeys((r["params"], r["dtype"]) for r in rows))
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    cell = {(r["optimizer"], r["params"], r["dtype"]): r for r in rows}
    head = [f"{n / 1e6:.1f}M {d}" for n, d in columns]
    out = ["| optimizer, rule | " + " | ".join(head) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = []
        for n, d in columns:
            r = cell.get((name, n, d))
            mark = "" if r is None or r.get("reference", "torch fused") == "torch fused" else " (foreach)"
            cells.append("" if r is None else f"x{r['ratio']:.2f}{mark}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def _generic_table(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else _cell(v)

    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return out


#: What each benchmark's table says, above it on the status page.
BENCHMARK_TEXT = {
    "optim_step": (
        "Optimizer step time, wdlib over torch.optim's fused kernel doing the same work (paired medians of "
        "alternating steps; goal at most x1.05; '(foreach)': torch's fused SGD kernel skips this dtype's "
        "updates on this machine, pytorch#191763, so both run the foreach kernels)."
    ),
    "trace_estimators": (
        "Hessian-trace estimators (wdlib.hessian.hessian_trace): the Hessian-vector products Hutch++ and XTrace need "
        "to reach the standard error of Hutchinson with 30 probes, judged on the spread of their estimates over "
        "seeds, and the saving (above 1: fewer HVPs than Hutchinson). '~': extrapolated at the Monte Carlo rate from "
        "the largest budget tried."
    ),
}


def benchmark_section(results_dir: Path = BENCHMARK_RESULTS) -> list[str]:
    """The latest benchmark tables (``benchmarks/results/*.json``, written by the benchmark scripts' ``--json``)
    with the machine and command that measured them; nothing when there are none."""
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    if not files:
        return []
    lines = ["", "## Latest benchmarks", "", "Measured by the scripts in `benchmarks/`, not by this build:", ""]
    for path in files:
        data = json.loads(path.read_text())
        name, rows = data.get("benchmark", path.stem), data.get("table") or data.get("rows", [])
        lines += [f"### {name}", ""]
        if name in BENCHMARK_TEXT:
            lines += [BENCHMARK_TEXT[name], ""]
        if data.get("summary"):
            lines += [str(data["summary"]), ""]
        lines += _optim_step_table(rows) if name == "optim_step" else _generic_table(rows)
        machine, command = _machine_line(data.get("machine", {})), data.get("command", "")
        lines += ["", f"Machine: {machine}.", f"Command: `{command}`.", ""]
    return lines


def status_page(
    records: list[dict], scale: str, results: Path | None = None, wall: float | None = None, lanes: int = 1
) -> str:
    """The build-status page: machine, versions, and per chapter its time, base seed, the runs it trained (how
    many as members of packs, :mod:`wdlib.packed`) and the claims recorded."""
    import torch

    sys.path.insert(0, str(ROOT))
    import wdlib

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = [
        "# Build status",
        "",
        f"Built {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} at scale **{scale}**.",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {platform.platform()} ({platform.machine()}), {os.cpu_count()} CPU cores |",
        f"| GPU | {gpu} |",
        f"| Python | {platform.python_version()} |",
        f"| torch | {torch.__version__} |",
        f"| wdlib | {wdlib.__version__} |",
        f"| commit | {git_commit() or 'unknown'} |",
        bf16_speed_row(),
        "",
        "| chapter | scale | base seed | execution time | CPU time | training runs | claims recorded | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    from wdlib.claims import catalogue

    cat = catalogue()
    recorded = _recorded(results)[1] if results is not None else {}
    for r in records:
        state = "ok" if r["error"] is None else f"failed: {r['error']}"
        name = r["chapter"].split("/")[-1]
        wanted = [cid for cid, c in cat.items() if c.chapter == name]
        got = {c["claim"] for c in recorded.get(name, {}).get("claims", [])}
        claims = f"{len(got & set(wanted))} of {len(wanted)}" if wanted else "none catalogued"
        lines.append(
            f"| [{r['chapter']}](../{r['chapter']}.ipynb) | {r['scale']} | {r.get('seed', 0)} | "
            f"{r['seconds']:.1f} s | {_cpu(r)} | {run_counts(results, name)} | {claims} | {state} |"
        )
    lines += [
        "",
        f"Total execution time: {sum(r['seconds'] for r in records):.0f} s of chapter time, "
        f"{sum(r.get('cpu_seconds') or 0 for r in records):.0f} CPU s"
        + (f", {wall:.0f} s from the first chapter's start to the last one's end." if wall else "."),
        f"Execution time is a chapter's wall time with {lanes} chapter(s) executing at a time",
        "(tools/build_book.py --lanes), so alone on the machine a chapter takes less; CPU time (its kernel's and",
        "its training processes', summed) is what it costs.",
    ]
    lines += [
        "",
        "A chapter built at smoke scale ran on the CPU with offline data; its full-scale setting is",
        "stated in the chapter and is meant for one GPU. Training runs: the configurations the chapter asked",
        "for; those packed trained together with others that differ only in seed, learning rate and weight",
        "decay, as one batched model (wdlib.packed; by default on a GPU only), each still its own run.",
        "`python -m wdlib.plan NOTEBOOK --scale full --device cuda` estimates a chapter's time on your device.",
    ]
    lines += benchmark_section()
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="smoke", choices=SCALES)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="base seed of every chapter (run seeds are seed*1000+i): another value checks the verdicts",
    )
    parser.add_argument("--out", default=str(ROOT / "_build"))
    parser.add_argument(
        "--lanes",
        type=int,
        default=None,
        help="chapters executed at a time (default: 2 on a CPU with 2+ cores, 1 on a GPU)",
    )
    args = parser.parse_args(argv)

    out = Path(args.out).resolve()
    src, results, html = out / "src", out / "results", out / "html"
    # a fresh run store every build: the book shows what this code computes now, not an older cache
    for d in (src, results, out / "store"):
        shutil.rmtree(d, ignore_errors=True)
    src.mkdir(parents=True)
    results.mkdir(parents=True)

    files = toc_files(ROOT / "_toc.yml")
    notebooks = [f.removesuffix(".ipynb") for f in files if (ROOT / f"{f.removesuffix('.ipynb')}.ipynb").exists()]
    generated = {"book/ledger", "book/status"}
    missing = [f for f in files if f not in notebooks and f not in generated and not (ROOT / f"{f}.md").exists()]
    if missing:
        print(f"[book] _toc.yml names files that do not exist: {missing}", file=sys.stderr)
        return 1
    site = load_site(ROOT)  # where the book lives (_config.yml) and the release readers install
    stale_cells = stale(ROOT, site)
    if stale_cells:
        print(f"[book] install cells out of date in {stale_cells}: run `python tools/site_config.py`", file=sys.stderr)
        return 1
    shutil.copy2(ROOT / "_toc.yml", src / "_toc.yml")
    (src / "_config.yml").write_text(built_config((ROOT / "_config.yml").read_text(), site))
    shutil.copytree(ROOT / "book", src / "book")
    api_pages.write_pages(src / "book" / "api")
    intro = src / "book" / "intro.md"
    intro.write_text(fill_intro(intro.read_text()))

    started = time.perf_counter()
    lanes = args.lanes if args.lanes is not None else (1 if args.device == "cuda" else min(2, os.cpu_count() or 1))
    records = execute(notebooks, src, results, args.scale, args.device, args.seed, lanes)
    (src / "book" / "ledger.md").write_text(ledger_page(results))
    wall = time.perf_counter() - started
    (src / "book" / "status.md").write_text(status_page(records, args.scale, results, wall, lanes))
    (out / "build_record.json").write_text(json.dumps(records, indent=2))

    print("[book] building HTML with jupyter-book (warnings are errors)", flush=True)
    shutil.rmtree(src / "_build", ignore_errors=True)
    jb = Path(sys.executable).with_name("jupyter-book")
    build = subprocess.run([str(jb), "build", str(src), "-W", "--keep-going", "--all"], cwd=src)
    if build.returncode == 0:
        shutil.rmtree(html, ignore_errors=True)
        shutil.move(str(src / "_build" / "html"), str(html))
        print(f"[book] HTML in {html}/index.html", flush=True)

    failures = [r for r in records if r["error"] is not None]
    if failures or build.returncode != 0:
        print("[book] FAILED:", file=sys.stderr)
        for r in failures:
            print(f"  - {r['chapter']}: {r['error']} (see {src / (r['chapter'] + '.ipynb')})", file=sys.stderr)
        if build.returncode != 0:
            print(f"  - jupyter-book build exited {build.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
