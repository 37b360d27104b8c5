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

from ._extras import require
from .config import RunConfig
from .packed import PACK_MODES, pack_key, plan_packs, train_packed
from .progress import progress_bar, show_progress
from .store import Store, default_store, stale_policy
from .train import RunResult, init_distributed, train

__all__ = ["run", "run_many", "run_pack", "sweep", "results_table", "expand_grid", "Store", "default_store"]


def run(
    cfg: RunConfig | Mapping[str, Any],
    store: Store | str | os.PathLike[str] | None = None,
    *,
    resume: bool = True,
    device: str = "auto",
    progress: bool | None = None,
    rerun: bool = False,
    note: Mapping[str, Any] | None = None,
) -> RunResult:
    """The result of ``cfg``: from the store, resumed from its checkpoint, or trained now.

    ``result.info["cached"]`` tells whether it came from the store, ``result.info["key"]`` its key.
    Under ``torchrun`` every rank calls it; rank 0 locks, looks up and writes, the others follow. The
    store (and so the checkpoints) must then be on a filesystem that every rank sees.
    ``resume=False`` ignores a checkpoint (the run starts over); a finished result is still reused.
    ``rerun=True`` trains even when the store holds a current result, and replaces it. A stale stored
    result (made by other code) is trained again, returned with a warning or returned as ``$WDLIB_STALE``
    says (:meth:`Store.get`). A configuration with ``init_from`` starts from that stored run's snapshot
    (:meth:`Store.snapshot`). ``note``: entries added to ``result.info`` of a run trained now (:func:`run_many`
    records there why a run was not packed).
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
        result.info.update(note or {})
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


_POOLS: dict[tuple[int, tuple[tuple[str, str], ...]], Any] = {}


def _pool(workers: int) -> Any:
    """The process pool of ``workers`` single-thread workers that :func:`run_many` trains in, kept for the next
    call: starting a worker (spawn, then importing torch and wdlib) costs seconds, and a chapter calls
    :func:`run_many` dozens of times; kept workers also keep their datasets cached. A pool is made anew when the
    environment's ``WDLIB_*`` variables changed since it started (workers read them when they start) or
    after a worker died."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    key = (workers, tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("WDLIB_"))))
    pool = _POOLS.get(key)
    if pool is None or getattr(pool, "_broken", False):
        for other in [k for k in _POOLS if k[0] == workers]:  # an older environment's pool: no longer used
            _POOLS.pop(other).shutdown(wait=False, cancel_futures=True)
        pool = _POOLS[key] = ProcessPoolExecutor(
            max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_worker_init
        )
    return pool


def run_pack(
    configs: Sequence[RunConfig | Mapping[str, Any]],
    store: Store | str | os.PathLike[str] | None = None,
    *,
    device: str = "auto",
    progress: bool | None = None,
) -> list[RunResult]:
    """The results of ``configs`` (which may differ only in :data:`wdlib.packed.VARYING`), the missing ones
    trained together as one pack (:func:`wdlib.packed.train_packed`) and each filed in the store under its
    own key. The pack holds every member's lock while it trains and checkpoints under
    :func:`wdlib.packed.pack_key` of its members, so a killed pack resumes when the same configurations come
    again. A single missing configuration is trained alone."""
    configs = [c if isinstance(c, RunConfig) else RunConfig.from_dict(dict(c)) for c in configs]
    store = store if isinstance(store, Store) else Store(store)
    stale_policy()
    keys = list(dict.fromkeys(c.key() for c in configs))
    by_key = {c.key(): c for c in configs}
    with contextlib.ExitStack() as locks:
        for key in sorted(keys):
            locks.enter_context(store.lock(key))
        todo = [by_key[k] for k in keys if store.get(by_key[k]) is None]
        if len(todo) > 1:
            path = store.checkpoint_path(pack_key([c.key() for c in todo]))
            inits = [
                None if c.init_from is None else store.snapshot(c.init_from["run"], c.init_from["step"]) for c in todo
            ]
            trained = train_packed(todo, device=device, checkpoint=path, progress=progress, init_states=inits)
            for c, r in zip(todo, trained):
                r.info["key"] = c.key()
                store.put(c, r)
            path.unlink(missing_ok=True)
    if len(todo) == 1:  # after the locks: run() takes the key's lock itself
        run(todo[0], store, device=device, progress=progress, note={"pack": {"members": 1, "reason": "alone"}})
    return [run(c, store, device=device, progress=False) for c in configs]


def pack_mode(pack: str | None = None) -> str:
    """``pack`` if given, else ``$WDLIB_PACK``, else ``"auto"``; ValueError unless one of
    :data:`wdlib.packed.PACK_MODES` (naming the environment variable when the value came from it)."""
    source = "pack" if pack is not None else "WDLIB_PACK"
    value = pack if pack is not None else os.environ.get("WDLIB_PACK", "auto")
    if value not in PACK_MODES:
        raise ValueError(f"{source} must be one of {', '.join(repr(p) for p in PACK_MODES)}, got {value!r}")
    return value


def _unit(configs: list[RunConfig], store: Store, device: str, reason: str | None) -> None:
    """Train one unit of :func:`run_many`'s plan: a pack, or one run alone (with the reason it was not packed)."""
    if len(configs) > 1:
        run_pack(configs, store, device=device, progress=False)
    else:
        note = {"pack": {"members": 1, "reason": reason or "alone"}}
        run(configs[0], store, device=device, progress=False, note=note)


def _unit_in_worker(cfg_dicts: list[dict[str, Any]], root: str, device: str, reason: str | None) -> None:
    _unit([RunConfig.from_dict(d) for d in cfg_dicts], Store(root), device, reason)


def run_many(
    configs: Sequence[RunConfig | Mapping[str, Any]],
    store: Store | str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
    device: str = "auto",
    progress: bool | None = None,
    desc: str | None = None,
    pack: str | None = None,
) -> list[RunResult]:
    """The results of ``configs`` in order, training those the store lacks in ``workers`` processes.

    ``pack``: whether configurations that differ only in seed, learning rate and weight decay (and their
    schedules) train together as one batched model (:mod:`wdlib.packed`): None reads ``$WDLIB_PACK``
    (default ``"auto"``); ``"auto"`` (on a GPU always, on a
    CPU never: :data:`wdlib.packed.CPU_REASON`), ``"always"`` or
    ``"never"``. Each result's ``info["pack"]`` records the decision: the pack's size and the member's index,
    or why the run trained alone (probes, diagnostics, BatchNorm, dropout, bf16-pure, ...).

    ``workers > 1`` trains the packs and lone runs in that many single-thread processes (for models under
    about 1M parameters two such workers beat one process with two threads on 2 cores). Configurations that
    start from another's snapshot (``init_from``) must come in a later call than that run.

    ``progress``: one tqdm bar over the configurations (``desc`` its label), advancing as each run or pack
    finishes (the stored ones at once); the runs' own step bars are off. None shows it when someone is
    watching (a terminal, or a notebook with ipywidgets) and never when ``CI`` is set or
    ``WDLIB_PROGRESS=0`` (the book build sets it).
    """
    configs = [c if isinstance(c, RunConfig) else RunConfig.from_dict(dict(c)) for c in configs]
    if os.environ.get("WDLIB_RUN_LOG"):  # one key per requested configuration (the book build checks planned_runs)
        with open(os.environ["WDLIB_RUN_LOG"], "a") as log:
            log.writelines(c.key() + "\n" for c in configs)
    store = store if isinstance(store, Store) else Store(store)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    pack = pack_mode(pack)
    keys = [c.key() for c in configs]
    per_key = collections.Counter(keys)  # a configuration may come more than once
    missing = {k: c for k, c in zip(keys, configs) if store.get(c) is None}
    todo_cfgs = list(missing.values())
    units, reasons = plan_packs(todo_cfgs, device, "never" if init_distributed()[1] > 1 else pack, split=workers)
    show = show_progress(progress) and init_distributed()[0] == 0
    stored = sum(n for k, n in per_key.items() if k not in missing)  # counted at once
    with progress_bar(
        total=len(configs),
        initial=stored,
        disable=not show,
        desc=desc or "runs",
        unit="run",
        mininterval=1.0,
        dynamic_ncols=True,
    ) as bar:

        def done(unit: list[int]) -> None:
            bar.update(sum(per_key[todo_cfgs[i].key()] for i in unit))

        if workers > 1 and len(units) > 1:
            from concurrent.futures import as_completed

            pool = _pool(workers)
            futures = {
                pool.submit(
                    _unit_in_worker,
                    [todo_cfgs[i].to_dict() for i in unit],
                    str(store.root),
                    device,
                    reasons.get(unit[0]),
                ): unit
                for unit in units
            }
            try:
                for f in as_completed(futures):
                    f.result()
                    done(futures[f])
            except BaseException:  # an error or an interrupt: the queued runs are dropped, the running ones finish
                for f in futures:
                    f.cancel()
                _POOLS.pop(next((k for k, v in _POOLS.items() if v is pool), None), None)
                pool.shutdown(wait=True, cancel_futures=True)  # the running ones end (and store) first
                raise
        else:
            for unit in units:
                _unit([todo_cfgs[i] for i in unit], store, device, reasons.get(unit[0]))
                done(unit)
        return [run(c, store, device=device, progress=False) for c in configs]  # no step bars inside a sweep


def sweep(
    base: RunConfig | Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
    store: Store | str | os.PathLike[str] | None = None,
    *,
    workers: int = 1,
    device: str = "auto",
    progress: bool | None = None,
    desc: str | None = None,
    pack: str | None = None,
) -> Any:
    """Run every configuration of the grid that the store lacks and return a table (a pandas DataFrame).

    One row per configuration: the grid's fields, ``key``, ``diverged_at``, ``wall_time`` and the
    final metrics. ``workers > 1`` trains in that many single-thread processes (for models under
    about 1M parameters two such workers beat one process with two threads on 2 cores).
    ``progress`` and ``desc``: one bar over the grid, as in :func:`run_many` (``desc`` defaults to
    the grid's field names). ``pack``: as in :func:`run_many` (the grid's seeds, learning rates and weight
    decays train as packs where it pays).
    """
    configs = expand_grid(base, grid)
    results = run_many(
        configs,
        store,
        workers=workers,
        device=device,
        progress=progress,
        desc=desc or "sweep over " + ", ".join(grid),
        pack=pack,
    )
    return results_table(configs, results, list(grid))


def results_table(configs: Sequence[RunConfig], results: Sequence[RunResult], fields: Sequence[str]) -> Any:
    """One row per run (a pandas DataFrame): the configuration ``fields``, ``key``, ``diverged_at``,
    ``wall_time`` and the final metrics (those named like a field or ``lr``/``wd``/``wall_time``/``step``
    are prefixed ``final_``). The table :func:`sweep` returns, for configurations built another way."""
    pd = require("pandas", purpose="a sweep's table")

    rows = []
    for c, r in zip(configs, results, strict=True):
        row = {
            f"final_{k}" if k in ("lr", "wd", "wall_time", "step") or k in fields else k: v for k, v in r.final.items()
        }
        row.update({"key": r.info["key"], "diverged_at": r.diverged_at, "wall_time": r.wall_time})
        row.update({name: c.value(name) for name in fields})  # the configuration's values, never a metric
        rows.append(row)
    return pd.DataFrame(rows)
