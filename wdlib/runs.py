"""Runs, sweeps and the store: a configuration is trained once, survives interruption, and is found again.

:func:`run` takes a :class:`~wdlib.config.RunConfig` and returns its :class:`~wdlib.train.RunResult`:
from the store when the same configuration already finished, continued from its checkpoint when it
was interrupted, trained otherwise. :func:`sweep` expands a grid and returns a table.

The store is a directory::

    index.sqlite            one row per finished run: key, scale, status, configuration, summary,
                            provenance (wdlib, git commit, torch, device, wall time, date), file hashes
    results/<key>.npz       history and probe arrays (loaded with allow_pickle=False)
    results/<key>.pt        final weights (and EMA, and the snapshots the configuration asks for),
                            loaded with weights_only=True
    checkpoints/<key>.pt    the checkpoint of a run in progress
    locks/<key>.lock        held while a process trains that configuration

Files are written to a temporary name and renamed; the index row comes last and records each
file's SHA-256, so a half-written or corrupted entry is detected and trained again, never read as
a result. SQLite (WAL mode, a busy timeout) and per-key file locks make parallel worker processes
safe. The scale is part of the configuration and so of the key: smoke and full results never mix.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import itertools
import json
import os
import platform
import sqlite3
import subprocess
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig
from .train import RunResult, init_distributed, train

__all__ = ["Store", "run", "run_many", "sweep", "results_table", "default_store", "expand_grid"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    scale TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    summary TEXT NOT NULL,
    provenance TEXT NOT NULL,
    files TEXT NOT NULL,
    created TEXT NOT NULL
)
"""
_SEP = "::"  # "/" in array names is stored as "::" inside the npz


def default_store() -> Path:
    """``$WDLIB_STORE``, else ``results/store`` under the current directory."""
    return Path(os.environ.get("WDLIB_STORE", "results/store"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _provenance(result: RunResult) -> dict[str, Any]:
    from . import __version__

    return {"wdlib": __version__, "git_commit": _git_commit(), "torch": torch.__version__,
            "python": platform.python_version(), "device": result.info.get("device"),
            "device_name": result.info.get("device_name"), "wall_time": result.wall_time,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "resumed_from": result.info.get("resumed_from", 0)}


class Store:
    """The run store in ``root`` (created on first use). See the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_store()
        for sub in ("results", "checkpoints", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "index.sqlite", timeout=120)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            with db:  # one transaction
                yield db
        finally:
            db.close()

    def checkpoint_path(self, key: str) -> Path:
        return self.root / "checkpoints" / f"{key}.pt"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Hold the key's file lock (other processes wanting the same run wait for this one)."""
        import fcntl

        with open(self.root / "locks" / f"{key}.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def put(self, cfg: RunConfig, result: RunResult) -> str:
        """File a finished run under its key: arrays, weights, then the index row with their hashes."""
        key = cfg.key()
        arrays = {f"history{_SEP}{k.replace('/', _SEP)}": v for k, v in result.history.items()}
        arrays.update({f"probes{_SEP}{k.replace('/', _SEP)}": v for k, v in result.probes.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        npz = self.root / "results" / f"{key}.npz"
        _atomic_write(npz, buf.getvalue())
        buf = io.BytesIO()
        torch.save({"model": result.model_state, "ema": result.ema_state,
                    "snapshots": {int(k): v for k, v in result.snapshots.items()}}, buf)
        pt = self.root / "results" / f"{key}.pt"
        _atomic_write(pt, buf.getvalue())
        files = {"npz": _sha256(npz), "pt": _sha256(pt)}
        summary = {**result.summary(), "info": result.info}
        status = "diverged" if result.diverged else "done"
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO runs (key, scale, status, config, summary, provenance, files, created) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (key, cfg.scale, status, json.dumps(cfg.to_dict(), sort_keys=True), json.dumps(summary),
                        json.dumps(_provenance(result)), json.dumps(files),
                        dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")))
        return key

    def _row(self, key: str) -> sqlite3.Row | None:
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            return db.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()

    def get(self, cfg: RunConfig) -> RunResult | None:
        """The stored result of ``cfg``, or None when it is missing, of another scale, or fails its hashes."""
        key = cfg.key()
        row = self._row(key)
        if row is None or row["scale"] != cfg.scale:
            return None
        npz, pt = self.root / "results" / f"{key}.npz", self.root / "results" / f"{key}.pt"
        try:
            files = json.loads(row["files"])
            if _sha256(npz) != files["npz"] or _sha256(pt) != files["pt"]:
                raise ValueError("hash mismatch")
            with np.load(npz, allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
            weights = torch.load(pt, map_location="cpu", weights_only=True)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError, EOFError, zipfile.BadZipFile):
            # missing, corrupted or half-written: not a result. run() trains it again under the key's
            # lock and put() replaces the entry; nothing is deleted here, where another process may be writing.
            return None
        history = {k[len("history" + _SEP):].replace(_SEP, "/"): v for k, v in arrays.items()
                   if k.startswith("history" + _SEP)}
        probes = {k[len("probes" + _SEP):].replace(_SEP, "/"): v for k, v in arrays.items()
                  if k.startswith("probes" + _SEP)}
        summary = json.loads(row["summary"])
        info = {**summary.get("info", {}), "cached": True, "key": key,
                "provenance": json.loads(row["provenance"])}
        return RunResult(config=json.loads(row["config"]), history=history, final=summary["final"],
                         diverged_at=summary["diverged_at"], steps_done=summary["steps_done"],
                         wall_time=summary["wall_time"], probes=probes, info=info,
                         model_state=weights["model"], ema_state=weights["ema"],
                         snapshots=weights.get("snapshots", {}))

    def snapshot(self, key: str, step: int) -> dict[str, torch.Tensor]:
        """The weights of stored run ``key`` after ``step`` steps (a step its configuration's ``snapshots``
        names, or its last step). ValueError when the run is not in the store or has no such snapshot."""
        row = self._row(key)
        if row is None:
            raise ValueError(f"init_from: run {key} is not in the store {self.root}; run its configuration first")
        cfg = RunConfig.from_dict(json.loads(row["config"]))
        result = self.get(cfg)
        if result is None:
            raise ValueError(f"init_from: the stored files of run {key} are missing or corrupted; run it again")
        if step in result.snapshots:
            return result.snapshots[step]
        if step == cfg.steps and not result.diverged and result.model_state is not None:
            return result.model_state
        raise ValueError(f"init_from: run {key} has no snapshot at step {step}; it kept "
                         f"{sorted(result.snapshots) + [cfg.steps]}")

    def discard(self, key: str) -> None:
        """Forget a run (its row and files)."""
        with self._connect() as db:
            db.execute("DELETE FROM runs WHERE key = ?", (key,))
        for path in (self.root / "results" / f"{key}.npz", self.root / "results" / f"{key}.pt"):
            path.unlink(missing_ok=True)

    def list(self, scale: str | None = None) -> list[dict[str, Any]]:
        """Every stored run (optionally of one scale): key, scale, status, configuration, summary, provenance."""
        query, args = "SELECT * FROM runs", ()
        if scale is not None:
            query, args = "SELECT * FROM runs WHERE scale = ?", (scale,)
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(query + " ORDER BY created", args).fetchall()
        return [{"key": r["key"], "scale": r["scale"], "status": r["status"], "config": json.loads(r["config"]),
                 "summary": json.loads(r["summary"]), "provenance": json.loads(r["provenance"])} for r in rows]


def run(cfg: RunConfig | Mapping[str, Any], store: Store | str | os.PathLike[str] | None = None, *,
        resume: bool = True, device: str = "auto", progress: bool | None = None) -> RunResult:
    """The result of ``cfg``: from the store, resumed from its checkpoint, or trained now.

    ``result.info["cached"]`` tells whether it came from the store, ``result.info["key"]`` its key.
    Under ``torchrun`` every rank calls it; rank 0 locks, looks up and writes, the others follow. The
    store (and so the checkpoints) must then be on a filesystem that every rank sees.
    ``resume=False`` ignores a checkpoint (the run starts over); a finished result is still reused.
    A configuration with ``init_from`` starts from that stored run's snapshot (:meth:`Store.snapshot`).
    """
    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(dict(cfg))
    store = store if isinstance(store, Store) else Store(store)
    key = cfg.key()
    init = None
    if cfg.init_from is not None and store.get(cfg) is None:
        init = store.snapshot(cfg.init_from["run"], cfg.init_from["step"])
    rank, world = init_distributed()
    if world > 1:  # under torchrun: rank 0 locks, looks up and writes; the others follow its decision
        import torch.distributed as tdist

        with store.lock(key) if rank == 0 else contextlib.nullcontext():
            decision = [store.get(cfg) is not None if rank == 0 else None]
            tdist.broadcast_object_list(decision, src=0)
            if not decision[0]:
                result = train(cfg, device=device, checkpoint=store.checkpoint_path(key), resume=resume,
                               progress=progress, init_state=init)
                if rank == 0:
                    store.put(cfg, result)
                    store.checkpoint_path(key).unlink(missing_ok=True)
            tdist.barrier()
        if decision[0]:
            return store.get(cfg)  # type: ignore[return-value]
        result.info.update({"cached": False, "key": key})
        return result
    found = store.get(cfg)
    if found is not None:
        return found
    with store.lock(key):
        found = store.get(cfg)  # another process may have finished it while we waited
        if found is not None:
            return found
        if cfg.init_from is not None and init is None:
            init = store.snapshot(cfg.init_from["run"], cfg.init_from["step"])
        result = train(cfg, device=device, checkpoint=store.checkpoint_path(key), resume=resume, progress=progress,
                       init_state=init)
        store.put(cfg, result)
        store.checkpoint_path(key).unlink(missing_ok=True)
    result.info.update({"cached": False, "key": key})
    return result


def expand_grid(base: RunConfig | Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> list[RunConfig]:
    """Every configuration of the grid (the product of its value lists), as changes to ``base``."""
    base = base if isinstance(base, RunConfig) else RunConfig.from_dict(dict(base))
    names = list(grid)
    for name in names:
        if isinstance(grid[name], (str, bytes)) or not isinstance(grid[name], Sequence) or not grid[name]:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of values, got {grid[name]!r}")
    return [base.replace(**dict(zip(names, values))) for values in itertools.product(*(grid[n] for n in names))]


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_in_worker(cfg_dict: dict[str, Any], root: str, device: str) -> str:
    result = run(RunConfig.from_dict(cfg_dict), Store(root), device=device, progress=False)
    return result.info["key"]


def run_many(configs: Sequence[RunConfig | Mapping[str, Any]], store: Store | str | os.PathLike[str] | None = None, *,
             workers: int = 1, device: str = "auto", progress: bool | None = None) -> list[RunResult]:
    """The results of ``configs`` in order, training those the store lacks in ``workers`` processes.

    ``workers > 1`` trains in that many single-thread processes (for models under about 1M
    parameters two such workers beat one process with two threads on 2 cores). Configurations that
    start from another's snapshot (``init_from``) must come in a later call than that run.
    """
    configs = [c if isinstance(c, RunConfig) else RunConfig.from_dict(dict(c)) for c in configs]
    store = store if isinstance(store, Store) else Store(store)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    missing = list({c.key(): c for c in configs if store.get(c) is None}.values())
    if workers > 1 and len(missing) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            futures = [pool.submit(_run_in_worker, c.to_dict(), str(store.root), device) for c in missing]
            for f in futures:
                f.result()
    return [run(c, store, device=device, progress=progress) for c in configs]


def sweep(base: RunConfig | Mapping[str, Any], grid: Mapping[str, Sequence[Any]],
          store: Store | str | os.PathLike[str] | None = None, *, workers: int = 1, device: str = "auto",
          progress: bool | None = None) -> Any:
    """Run every configuration of the grid that the store lacks and return a table (a pandas DataFrame).

    One row per configuration: the grid's fields, ``key``, ``diverged_at``, ``wall_time`` and the
    final metrics. ``workers > 1`` trains in that many single-thread processes (for models under
    about 1M parameters two such workers beat one process with two threads on 2 cores).
    """
    configs = expand_grid(base, grid)
    results = run_many(configs, store, workers=workers, device=device, progress=progress)
    return results_table(configs, results, list(grid))


def results_table(configs: Sequence[RunConfig], results: Sequence[RunResult], fields: Sequence[str]) -> Any:
    """One row per run (a pandas DataFrame): the configuration ``fields``, ``key``, ``diverged_at``,
    ``wall_time`` and the final metrics (those named like a field or ``lr``/``wd``/``wall_time``/``step``
    are prefixed ``final_``). The table :func:`sweep` returns, for configurations built another way."""
    import pandas as pd

    rows = []
    for c, r in zip(configs, results, strict=True):
        row = {f"final_{k}" if k in ("lr", "wd", "wall_time", "step") or k in fields else k: v
               for k, v in r.final.items()}
        row.update({"key": r.info["key"], "diverged_at": r.diverged_at, "wall_time": r.wall_time})
        row.update({name: getattr(c, name) for name in fields})  # the configuration's values, never a metric
        rows.append(row)
    return pd.DataFrame(rows)
