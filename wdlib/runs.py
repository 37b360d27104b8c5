"""Runs and sweeps: a configuration is trained once, survives interruption, and is found again.

:func:`run` takes a :class:`~wdlib.config.RunConfig` and returns its :class:`~wdlib.train.RunResult`:
from the store (:class:`wdlib.store.Store`) when the same configuration already finished, continued
from its checkpoint when it was interrupted, trained otherwise. :func:`run_many` trains many (in worker
processes, one progress bar), :func:`sweep` expands a grid and returns a table. The store's layout,
staleness policy (``WDLIB_STALE``) and recovery are described in :mod:`wdlib.store`.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .config import RunConfig
from .progress import progress_bar, show_progress
from .store import Store, default_store, stale_policy
from .train import RunResult, init_distributed, train

__all__ = ["run", "run_many", "sweep", "results_table", "expand_grid", "Store", "default_store"]


def run(
    cfg: RunConfig | Mapping[str, Any],
    store: Store | str | os.PathLike[str] | None = None,
    *,
    resume: bool = True,
    device: str = "auto",
    progress: bool | None = None,
    rerun: bool = False,
) -> RunResult:
    """The result of ``cfg``: from the store, resumed from its checkpoint, or trained now.

    ``result.info["cached"]`` tells whether it came from the store, ``result.info["key"]`` its key.
    Under ``torchrun`` every rank calls it; rank 0 locks, looks up and writes, the others follow. The
    store (and so the checkpoints) must then be on a filesystem that every rank sees.
    ``resume=False`` ignores a checkpoint (the run starts over); a finished result is still reused.
    ``rerun=True`` trains even when the store holds a current result, and replaces it. A stale stored
    result (made by other code) is trained again, returned with a warning or returned as ``$WDLIB_STALE``
    says (:meth:`Store.get`). A configuration with ``init_from`` starts from that stored run's snapshot
    (:meth:`Store.snapshot`).
    """
    cfg = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(dict(cfg))
    if not isinstance(rerun, bool):
        raise ValueError(f"rerun must be True or False, got {rerun!r}")
    stale_policy()  # a bad $WDLIB_STALE fails before anything is trained
    store = store if isinstance(store, Store) else Store(store)
    key = cfg.key()

    def lookup() -> RunResult | None:
        return None if rerun else store.get(cfg)

    init = None
    if cfg.init_from is not None and lookup() is None:
        init = store.snapshot(cfg.init_from["run"], cfg.init_from["step"])
    rank, world = init_distributed()
    if world > 1:  # under torchrun: rank 0 locks, looks up and writes; the others follow its decision
        import torch.distributed as tdist

        with store.lock(key) if rank == 0 else contextlib.nullcontext():
            decision = [lookup() is not None if rank == 0 else None]
            tdist.broadcast_object_list(decision, src=0)
            if not decision[0]:
                result = train(
                    cfg,
                    device=device,
                    checkpoint=store.checkpoint_path(key),
                    resume=resume,
                    progress=progress,
                    init_state=init,
                )
                if rank == 0:
                    store.put(cfg, result)
                    store.checkpoint_path(key).unlink(missing_ok=True)
            tdist.barrier()
        if decision[0]:
            return store.get(cfg)  # type: ignore[return-value]
        result.info.update({"cached": False, "key": key})
        return result
    found = lookup()
    if found is not None:
        return found
    with store.lock(key):
        found = lookup()  # another process may have finished it while we waited
        if found is not None:
            return found
        if cfg.init_from is not None and init is None:
            init = store.snapshot(cfg.init_from["run"], cfg.init_from["step"])
        result = train(
            cfg, device=device, checkpoint=store.checkpoint_path(key), resume=resume, progress=progress, init_state=init
        )
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


def run_many(
    configs: Sequence[RunConfig | Mapping[str, Any]],
    store: Store | str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
    device: str = "auto",
    progress: bool | None = None,
    desc: str | None = None,
) -> list[RunResult]:
    """The results of ``configs`` in order, training those the store lacks in ``workers`` processes.

    ``workers > 1`` trains in that many single-thread processes (for models under about 1M
    parameters two such workers beat one process with two threads on 2 cores). Configurations that
    start from another's snapshot (``init_from``) must come in a later call than that run.

    ``progress``: one tqdm bar over the configurations (``desc`` its label), advancing as each run
    finishes (the stored ones at once); the runs' own step bars are off. None shows it when someone is
    watching (a terminal, or a notebook with ipywidgets) and never when ``CI`` is set or
    ``WDLIB_PROGRESS=0`` (the book build sets it).
    """
    configs = [c if isinstance(c, RunConfig) else RunConfig.from_dict(dict(c)) for c in configs]
    store = store if isinstance(store, Store) else Store(store)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    keys = [c.key() for c in configs]
    per_key = collections.Counter(keys)  # a configuration may come more than once
    missing = {k: c for k, c in zip(keys, configs) if store.get(c) is None}
    show = show_progress(progress) and init_distributed()[0] == 0
    todo = set(missing)
    stored = sum(n for k, n in per_key.items() if k not in todo)  # counted at once
    with progress_bar(
        total=len(configs),
        initial=stored,
        disable=not show,
        desc=desc or "runs",
        unit="run",
        mininterval=1.0,
        dynamic_ncols=True,
    ) as bar:
        if workers > 1 and len(missing) > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(
                max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
            ) as pool:
                futures = {
                    pool.submit(_run_in_worker, c.to_dict(), str(store.root), device): k for k, c in missing.items()
                }
                for f in as_completed(futures):
                    f.result()
                    todo.discard(futures[f])
                    bar.update(per_key[futures[f]])
        results = []
        for k, c in zip(keys, configs):
            results.append(run(c, store, device=device, progress=False))  # no step bars inside a sweep
            if k in todo:
                todo.discard(k)
                bar.update(per_key[k])
    return results


def sweep(
    base: RunConfig | Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
    store: Store | str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
    device: str = "auto",
    progress: bool | None = None,
    desc: str | None = None,
) -> Any:
    """Run every configuration of the grid that the store lacks and return a table (a pandas DataFrame).

    One row per configuration: the grid's fields, ``key``, ``diverged_at``, ``wall_time`` and the
    final metrics. ``workers > 1`` trains in that many single-thread processes (for models under
    about 1M parameters two such workers beat one process with two threads on 2 cores).
    ``progress`` and ``desc``: one bar over the grid, as in :func:`run_many` (``desc`` defaults to
    the grid's field names).
    """
    configs = expand_grid(base, grid)
    results = run_many(
        configs, store, workers=workers, device=device, progress=progress, desc=desc or "sweep over " + ", ".join(grid)
    )
    return results_table(configs, results, list(grid))


def results_table(configs: Sequence[RunConfig], results: Sequence[RunResult], fields: Sequence[str]) -> Any:
    """One row per run (a pandas DataFrame): the configuration ``fields``, ``key``, ``diverged_at``,
    ``wall_time`` and the final metrics (those named like a field or ``lr``/``wd``/``wall_time``/``step``
    are prefixed ``final_``). The table :func:`sweep` returns, for configurations built another way."""
    import pandas as pd

    rows = []
    for c, r in zip(configs, results, strict=True):
        row = {
            f"final_{k}" if k in ("lr", "wd", "wall_time", "step") or k in fields else k: v for k, v in r.final.items()
        }
        row.update({"key": r.info["key"], "diverged_at": r.diverged_at, "wall_time": r.wall_time})
        row.update({name: c.value(name) for name in fields})  # the configuration's values, never a metric
        rows.append(row)
    return pd.DataFrame(rows)
