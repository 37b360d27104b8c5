"""Execute every chapter with papermill, generate the ledger and status pages, build the HTML book.

    python tools/build_book.py [--scale smoke|full] [--device auto|cpu|cuda] [--out _build]

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

import yaml

ROOT = Path(__file__).resolve().parent.parent
SCALES = ("smoke", "full")


def toc_files(toc_path: Path) -> list[str]:
    """Every ``file:`` entry of a Jupyter Book ``_toc.yml``, in order."""
    toc = yaml.safe_load(toc_path.read_text())
    files: list[str] = [toc["root"]]

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "file" in node:
                files.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+local changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def execute(notebooks: list[str], src: Path, results: Path, scale: str, device: str) -> list[dict]:
    """Run each notebook with papermill into ``src``; return one record per chapter."""
    import papermill as pm

    os.environ["WDLIB_RESULTS_DIR"] = str(results)
    os.environ["WDLIB_STORE"] = str(results.parent / "store")  # the chapters' runs (wiped by main())
    os.environ["WDLIB_PROGRESS"] = "0"  # no progress bars in the executed copies
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    records = []
    for nb in notebooks:
        out = src / f"{nb}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"[book] executing {nb}.ipynb at scale={scale}", flush=True)
        start = time.perf_counter()
        error = None
        try:
            pm.execute_notebook(str(ROOT / f"{nb}.ipynb"), str(out), parameters={"scale": scale, "device": device},
                                cwd=str(out.parent), kernel_name="python3", progress_bar=False,
                                log_output=False)
        except Exception as exc:  # every chapter runs; failures are listed at the end
            error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        seconds = time.perf_counter() - start
        print(f"[book] {nb}: {'FAILED ' + error if error else 'ok'} in {seconds:.1f} s", flush=True)
        records.append({"chapter": nb, "seconds": seconds, "scale": scale, "error": error})
    return records


def ledger_page(results: Path) -> str:
    sys.path.insert(0, str(ROOT))
    from wdlib.claims import load_results

    lines = ["# Claims ledger", "",
             "Every verdict below was computed by a chapter from its own data, at the scale shown, by the rule",
             "stated in the chapter; this page is generated from the chapters' recorded results",
             "(`<chapter>.claims.json`) at build time.", ""]
    chapters = load_results(results)
    if not chapters:
        lines.append("No chapter recorded a result in this build.")
        return "\n".join(lines) + "\n"
    lines += ["| claim | source | statement | verdict | key number | chapter (scale) |", "|---|---|---|---|---|---|"]
    for ch in chapters:
        link = f"[{ch['chapter']}](../notebooks/{ch['chapter']}.ipynb)"
        for c in ch["claims"]:
            statement = c["statement"].replace("|", "\\|")
            key = str(c["key_number"]).replace("|", "\\|")
            lines.append(f"| {c['claim']} | {c['source']} | {statement} | **{c['verdict']}** | {key} | "
                         f"{link} ({ch['scale']}) |")
    counts: dict[str, int] = {}
    for ch in chapters:
        for c in ch["claims"]:
            counts[c["verdict"]] = counts.get(c["verdict"], 0) + 1
    lines += ["", "Totals: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + "."]
    return "\n".join(lines) + "\n"


def status_page(records: list[dict], scale: str) -> str:
    import torch

    sys.path.insert(0, str(ROOT))
    import wdlib

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    lines = ["# Build status", "",
             f"Built {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} at scale **{scale}**.", "",
             "| | |", "|---|---|",
             f"| machine | {platform.platform()} ({platform.machine()}), {os.cpu_count()} CPU cores |",
             f"| GPU | {gpu} |",
             f"| Python | {platform.python_version()} |",
             f"| torch | {torch.__version__} |",
             f"| wdlib | {wdlib.__version__} |",
             f"| commit | {git_commit() or 'unknown'} |", "",
             "| chapter | scale | execution time | status |", "|---|---|---|---|"]
    for r in records:
        state = "ok" if r["error"] is None else f"failed: {r['error']}"
        lines.append(f"| [{r['chapter']}](../{r['chapter']}.ipynb) | {r['scale']} | {r['seconds']:.1f} s | {state} |")
    lines += ["", "A chapter built at smoke scale ran on the CPU with offline data; its full-scale setting is",
              "stated in the chapter and is meant for one GPU."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="smoke", choices=SCALES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=str(ROOT / "_build"))
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
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "book", src / "book")

    records = execute(notebooks, src, results, args.scale, args.device)
    (src / "book" / "ledger.md").write_text(ledger_page(results))
    (src / "book" / "status.md").write_text(status_page(records, args.scale))
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
