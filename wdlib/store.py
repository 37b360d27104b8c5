"""The run store: a directory where each configuration's result is filed under its key, once.

The store is a directory::

    index.sqlite            one row per finished run: key, scale, status, configuration, summary,
                            provenance (wdlib, git commit, torch, device, wall time, date, code
                            identity), file hashes
    results/<key>.npz       history and probe arrays (loaded with allow_pickle=False)
    results/<key>.pt        final weights (and EMA, and the snapshots the configuration asks for),
                            loaded with weights_only=True
    results/<key>.json      the run's self-description: everything its index row holds
    checkpoints/<key>-<code>.pt  the checkpoint of a run in progress (code: a hash of the code identity)
    locks/<key>.lock        held while a process trains that configuration

Files are written to a temporary name and renamed; the .json and then the index row come last and
record each file's SHA-256, so a half-written or corrupted entry is detected and trained again,
never read as a result. SQLite (WAL mode, a busy timeout) and per-key file locks make parallel
worker processes safe. The scale is part of the configuration and so of the key: smoke and full
results never mix.

Stale results. The key hashes the configuration only, so each result also records the *code
identity* that made it (:func:`code_identity`: wdlib's version, torch's, and a SHA-256 of the
training code path :data:`CODE_FILES`). A result whose identity differs from the running code's (or
that has none: stored before identities were recorded) is *stale*, and the environment variable
``WDLIB_STALE`` says what a lookup does with it:

``recompute`` (default)
    train it again; the new result replaces the old entry.
``warn``
    return it, with a :class:`StaleResultWarning` naming the key and what differs.
``reuse``
    return it silently.

Any other value is a ValueError. ``wdlib.runs.run(..., rerun=True)`` (``wdlib run --rerun``) trains even a
current result again; ``wdlib runs --all-stale`` removes the stale ones, ``--forget KEY`` one run.

Recovery. A damaged ``index.sqlite`` (truncated, overwritten: SQLite reports it as a database
error) is moved aside to ``index.sqlite.damaged-<UTC time>`` (with its -wal and -shm) and rebuilt
from the ``results/*.json`` files (:meth:`Store.reindex`), with a :class:`StoreRecoveryWarning`; a
readable index that lacks rows for existing .json files (emptied, or deleted) gets them back on
lookup. Recovery never deletes a result file. Results stored before the .json files existed are
described only by their index row and so cannot be recovered from a lost index (the warning counts them).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import io
import json
import os
import platform
import sqlite3
import subprocess
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._version import __version__
from .config import RunConfig, is_run_key
from .train import RunResult

__all__ = [
    "Store",
    "default_store",
    "code_identity",
    "stale_policy",
    "check_key",
    "STALE_POLICIES",
    "CODE_FILES",
    "StaleResultWarning",
    "StoreRecoveryWarning",
]

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
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _provenance(result: RunResult) -> dict[str, Any]:
    return {
        "wdlib": __version__,
        "git_commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": result.info.get("device"),
        "device_name": result.info.get("device_name"),
        "wall_time": result.wall_time,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "resumed_from": result.info.get("resumed_from", 0),
    }


#: The wdlib modules a training run executes (wdlib.train and what it imports inside wdlib, transitively),
#: hashed into the code identity that every stored result records.
#: wdlib's modules that are not on a run's code path (the book layer, the store, the CLI, progress bars).
_NOT_TRAINING: frozenset[str] = frozenset(
    {
        "__init__.py",
        "__main__.py",
        "_version.py",
        "check.py",
        "claims.py",
        "cli.py",
        "plan.py",
        "store.py",
        "plotting.py",
        "progress.py",
        "runs.py",
        "stats.py",
    }
)
#: The files a run's result depends on (every top-level module of wdlib's core and engine layers).
#:
#: :meta hide-value:
CODE_FILES: tuple[str, ...] = tuple(
    sorted(p.name for p in Path(__file__).resolve().parent.glob("*.py") if p.name not in _NOT_TRAINING)
)
#: What a lookup does with a stale result (one stored by other code), read from ``$WDLIB_STALE``.
STALE_POLICIES: tuple[str, ...] = ("recompute", "warn", "reuse")


class StaleResultWarning(UserWarning):
    """A stored result made by other code (wdlib, torch or the training code) is returned (``WDLIB_STALE=warn``)."""


class StoreRecoveryWarning(UserWarning):
    """The store's index was unreadable or incomplete and was rebuilt from the self-describing result files."""


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, str]:
    """What made a result: ``{"wdlib": __version__, "torch": torch.__version__, "code": SHA-256}``.

    ``code`` hashes the bytes of :data:`CODE_FILES` (the training code path) as they are on disk when
    first asked, once per process (a file that is not there enters as absent). A stored result whose
    identity differs from this one is *stale*.
    """
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for name in CODE_FILES:
        h.update(name.encode() + b"\0")
        path = here / name
        h.update(path.read_bytes() if path.is_file() else b"<absent>")
        h.update(b"\0")
    return {"wdlib": __version__, "torch": torch.__version__, "code": h.hexdigest()}


def stale_policy() -> str:
    """``$WDLIB_STALE``: ``recompute`` (default), ``warn`` or ``reuse``; anything else is a ValueError."""
    value = os.environ.get("WDLIB_STALE", "").strip().lower() or "recompute"
    if value not in STALE_POLICIES:
        raise ValueError(
            f"WDLIB_STALE must be one of {', '.join(STALE_POLICIES)} (unset: recompute), "
            f"got {os.environ.get('WDLIB_STALE')!r}"
        )
    return value


def _staleness(provenance: Mapping[str, Any]) -> str | None:
    """How a stored run's code identity (``provenance["identity"]``) differs from :func:`code_identity`
    (None: it does not, the result is current)."""
    identity = provenance.get("identity")
    if not isinstance(identity, dict):
        return "it records no code identity (stored before wdlib recorded one)"
    now = code_identity()
    diffs = []
    for name, label in (("wdlib", "wdlib"), ("torch", "torch"), ("code", "training code")):
        old, new = identity.get(name), now[name]
        if old != new:
            short = (lambda v: str(v)[:12]) if name == "code" else str
            diffs.append(f"{label} {short(old)} -> {short(new)}")
    return ", ".join(diffs) or None


def check_key(key: Any) -> str:
    """``key`` if it is a run key (24 lowercase hex digits, :meth:`RunConfig.key`), else a ValueError."""
    if not is_run_key(key):
        raise ValueError(f"a run key is 24 hex digits (as `wdlib runs` lists them), got {key!r}")
    return key


def _is_damage(err: sqlite3.Error) -> bool:
    """Whether an SQLite error means the index file is damaged (not merely busy or misused)."""
    msg = str(err).lower()
    return type(err) is sqlite3.DatabaseError or "malformed" in msg or "not a database" in msg


_ROW_FIELDS = ("key", "scale", "status", "config", "summary", "provenance", "files", "created")


def _row_of(record: Mapping[str, Any]) -> dict[str, str]:
    """The index row of a run's self-description (``results/<key>.json``): the same fields, JSON-encoded."""
    return {
        "key": str(record["key"]),
        "scale": str(record["scale"]),
        "status": str(record["status"]),
        "config": json.dumps(record["config"], sort_keys=True),
        "summary": json.dumps(record["summary"]),
        "provenance": json.dumps(record["provenance"]),
        "files": json.dumps(record["files"]),
        "created": str(record["created"]),
    }


def _unrecovered(skipped: Sequence[str], legacy: int, fate: str) -> list[str]:
    """The parts of a recovery warning about what a rebuilt index lacks: result files skipped as unreadable
    or failing their hashes, and results stored before the .json files existed (``fate`` says what becomes
    of those)."""
    parts = []
    if skipped:
        parts.append(
            f"{len(skipped)} result file(s) skipped as unreadable or failing their hashes ({', '.join(skipped[:5])})"
        )
    if legacy:
        parts.append(f"{legacy} result(s) stored before results/<key>.json existed {fate}")
    return parts


class Store:
    """The run store in ``root``. See the module docstring for the layout, staleness and recovery.

    ``create=False`` opens an existing store only: a path that holds neither ``index.sqlite`` nor
    ``results/`` raises ValueError instead of becoming a new, empty store (``wdlib runs`` uses it, so a
    mistyped path is reported rather than listed as "0 runs").
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, create: bool = True) -> None:
        self.root = Path(root) if root is not None else default_store()
        index = self.root / "index.sqlite"
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"run store {self.root} is not a directory")
        if not create and not (index.exists() or (self.root / "results").is_dir()):
            raise ValueError(f"no run store at {self.root} (it has no index.sqlite or results/)")
        for sub in ("results", "checkpoints", "locks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # processes opening a new store at once (DDP ranks, workers) create the index one at a time: switching a
        # new database to WAL needs it alone, and SQLite answers "database is locked" without waiting for that
        with self._index_lock():
            fresh = not index.exists()
            try:
                self._connection(lambda db: db.execute(_SCHEMA))
                damaged = False
            except sqlite3.DatabaseError as err:
                if not _is_damage(err):
                    raise
                damaged = True  # recovered below, outside this lock (the recovery takes it itself)
        if damaged:
            self._db(lambda db: db.execute(_SCHEMA))
        if fresh and any((self.root / "results").glob("*.json")):
            n = self.reindex()
            warnings.warn(
                f"run store {self.root} had no index.sqlite; rebuilt it from results/*.json ({n} run(s))",
                StoreRecoveryWarning,
                stacklevel=2,
            )

    # --- the index ----------------------------------------------------------------------------------

    def _connection(self, fn: Any) -> Any:
        """``fn(db)`` inside one transaction on a fresh connection (rows as dicts-by-name)."""
        db = sqlite3.connect(self.root / "index.sqlite", timeout=120)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.row_factory = sqlite3.Row
            with db:  # one transaction
                return fn(db)
        finally:
            db.close()

    def _db(self, fn: Any) -> Any:
        """``fn(db)`` on the index; a damaged index is moved aside and rebuilt first (:meth:`_recover`)."""
        try:
            return self._connection(fn)
        except sqlite3.DatabaseError as err:
            if not _is_damage(err):
                raise
            self._recover(err)
            return self._connection(fn)

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        import fcntl

        with open(self.root / "locks" / "index.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _recover(self, err: sqlite3.Error) -> None:
        """Move a damaged ``index.sqlite`` (and its -wal, -shm) aside and rebuild it from results/*.json.

        Under a store-wide lock, so that of several processes that hit the damage one recovers and the
        others find the new index. Result files are never deleted here.
        """
        index = self.root / "index.sqlite"
        with self._index_lock():
            try:  # another process may have rebuilt it while this one waited
                if [tuple(r) for r in self._connection(lambda db: db.execute("PRAGMA quick_check").fetchall())] == [
                    ("ok",)
                ]:
                    return
            except sqlite3.DatabaseError as again:
                if not _is_damage(again):
                    raise
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            aside = index.with_name(f"index.sqlite.damaged-{stamp}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{index}{suffix}")
                if src.exists():
                    os.replace(src, Path(f"{aside}{suffix}"))
            self._connection(lambda db: db.execute(_SCHEMA))
            n, skipped, legacy = self._reindex(via=self._connection)
        msg = (
            f"run store index {index} was unreadable ({err}); moved it to {aside.name} and rebuilt it from "
            f"results/*.json: {n} run(s) recovered"
        )
        warnings.warn(
            "; ".join(
                [
                    msg,
                    *_unrecovered(
                        skipped, legacy, "cannot be recovered (their files stay in results/) and will be trained again"
                    ),
                ]
            ),
            StoreRecoveryWarning,
            stacklevel=3,
        )

    def _record(self, key: str) -> dict[str, Any] | None:
        """The verified self-description ``results/<key>.json`` of a run as an index row, or None when it is
        missing, unreadable, names another key or its files fail their hashes."""
        path = self.root / "results" / f"{key}.json"
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict) or rec.get("key") != key or not isinstance(rec.get("config"), dict):
                return None
            files = rec["files"]
            for kind in ("npz", "pt"):
                if _sha256(self.root / "results" / f"{key}.{kind}") != files[kind]:
                    return None
            return _row_of(rec)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _insert(self, db: sqlite3.Connection, row: Mapping[str, Any]) -> None:
        db.execute(
            f"INSERT OR REPLACE INTO runs ({', '.join(_ROW_FIELDS)}) VALUES ({', '.join('?' * len(_ROW_FIELDS))})",
            tuple(row[f] for f in _ROW_FIELDS),
        )

    def _reindex(self, via: Any = None) -> tuple[int, list[str], int]:
        """(runs indexed, names of result files skipped, results without a .json) -- see :meth:`reindex`.
        ``via`` runs the insertions (default :meth:`_db`; :meth:`_recover`, holding the index lock, passes
        :meth:`_connection` so that a failure cannot recurse into another recovery)."""
        results = self.root / "results"
        rows, skipped = [], []
        for path in sorted(results.glob("*.json")):
            key = path.stem
            row = self._record(key) if is_run_key(key) else None
            if row is None:
                skipped.append(path.name)
            else:
                rows.append(row)
        legacy = sum(1 for p in results.glob("*.npz") if not p.with_suffix(".json").exists())

        def insert(db: sqlite3.Connection) -> None:
            for row in rows:
                self._insert(db, row)

        (via or self._db)(insert)
        return len(rows), skipped, legacy

    def reindex(self) -> int:
        """Rebuild the index from the self-describing ``results/<key>.json`` files; the number of runs indexed.

        Each file's results are checked against its recorded SHA-256s; a file that fails is skipped (and
        kept, never deleted), and so are results stored before the .json files existed, whose only
        description was the index row (a warning counts both). Rows already in the index stay.
        """
        n, skipped, legacy = self._reindex()
        parts = _unrecovered(skipped, legacy, "can be found only through the index")
        if parts:
            warnings.warn(f"reindex of {self.root}: {'; '.join(parts)}", StoreRecoveryWarning, stacklevel=2)
        return n

    def _row(self, key: str) -> dict[str, Any] | None:
        """The index row of ``key``; when the index lacks it but a verified ``results/<key>.json`` exists
        (an emptied or rebuilt index), the row is put back from that file first."""
        row = self._db(lambda db: db.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone())
        if row is not None:
            return dict(row)
        healed = self._record(key)
        if healed is not None:
            self._db(lambda db: self._insert(db, healed))
        return healed

    # --- files ----------------------------------------------------------------------------------------

    def checkpoint_path(self, key: str) -> Path:
        """Where the run ``key`` keeps its checkpoint while it trains: named by the key and the code identity.

        A checkpoint written by other code (another wdlib, torch or training code) is not resumed, for the
        same reason a stale result is not reused: the two halves of the run would come from different code.
        It stays on disk, untouched.
        """
        code = hashlib.sha256(json.dumps(code_identity(), sort_keys=True).encode()).hexdigest()[:12]
        return self.root / "checkpoints" / f"{key}-{code}.pt"

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
        """File a finished run under its key: arrays, weights, its self-description ``results/<key>.json``
        (everything the index row holds, the code identity included), then the index row."""
        key = cfg.key()
        arrays = {f"history{_SEP}{k.replace('/', _SEP)}": v for k, v in result.history.items()}
        arrays.update({f"probes{_SEP}{k.replace('/', _SEP)}": v for k, v in result.probes.items()})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        npz = self.root / "results" / f"{key}.npz"
        _atomic_write(npz, buf.getvalue())
        buf = io.BytesIO()
        torch.save(
            {
                "model": result.model_state,
                "ema": result.ema_state,
                "snapshots": {int(k): v for k, v in result.snapshots.items()},
            },
            buf,
        )
        pt = self.root / "results" / f"{key}.pt"
        _atomic_write(pt, buf.getvalue())
        files = {"npz": _sha256(npz), "pt": _sha256(pt)}
        summary = {**result.summary(), "info": result.info}
        status = "diverged" if result.diverged else "done"
        provenance = {**_provenance(result), "identity": code_identity()}
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        record = {
            "format": 1,
            "key": key,
            "scale": cfg.scale,
            "status": status,
            "config": cfg.to_dict(),
            "summary": summary,
            "provenance": provenance,
            "files": files,
            "created": created,
        }
        _atomic_write(self.root / "results" / f"{key}.json", json.dumps(record, sort_keys=True, indent=1).encode())
        row = _row_of(record)
        self._db(lambda db: self._insert(db, row))
        return key

    def get(self, cfg: RunConfig, *, stale: str | None = None) -> RunResult | None:
        """The stored result of ``cfg``, or None when it is missing, of another scale, or fails its hashes.

        A *stale* result (its code identity differs from :func:`code_identity`, or it has none) follows
        ``stale`` (default ``$WDLIB_STALE``): ``recompute`` -> None (so :func:`wdlib.runs.run` trains it again and
        replaces it), ``warn`` -> returned with a :class:`StaleResultWarning`, ``reuse`` -> returned.
        ``result.info["stale"]`` tells which it was.
        """
        policy = stale_policy() if stale is None else stale
        if policy not in STALE_POLICIES:
            raise ValueError(f"stale must be one of {', '.join(STALE_POLICIES)}, got {policy!r}")
        key = cfg.key()
        row = self._row(key)
        if row is None or row["scale"] != cfg.scale:
            return None
        provenance = json.loads(row["provenance"])
        why = _staleness(provenance)
        if why is not None and policy == "recompute":
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
        if why is not None and policy == "warn":
            warnings.warn(
                f"run {key} in {self.root} is stale ({why}); returning it because WDLIB_STALE=warn "
                f"(recompute trains it again)",
                StaleResultWarning,
                stacklevel=2,
            )
        history = {
            k[len("history" + _SEP) :].replace(_SEP, "/"): v
            for k, v in arrays.items()
            if k.startswith("history" + _SEP)
        }
        probes = {
            k[len("probes" + _SEP) :].replace(_SEP, "/"): v for k, v in arrays.items() if k.startswith("probes" + _SEP)
        }
        summary = json.loads(row["summary"])
        info = {
            **summary.get("info", {}),
            "cached": True,
            "key": key,
            "stale": why is not None,
            "provenance": provenance,
        }
        return RunResult(
            config=json.loads(row["config"]),
            history=history,
            final=summary["final"],
            diverged_at=summary["diverged_at"],
            steps_done=summary["steps_done"],
            wall_time=summary["wall_time"],
            probes=probes,
            info=info,
            model_state=weights["model"],
            ema_state=weights["ema"],
            snapshots=weights.get("snapshots", {}),
        )

    def snapshot(self, key: str, step: int) -> dict[str, torch.Tensor]:
        """The weights of stored run ``key`` after ``step`` steps (a step its configuration's ``snapshots``
        names, or its last step). ValueError when the run is not in the store, has no such snapshot, or is
        stale while ``WDLIB_STALE=recompute`` (a current run must not start from another code's weights)."""
        row = self._row(key)
        if row is None:
            raise ValueError(f"init_from: run {key} is not in the store {self.root}; run its configuration first")
        why = _staleness(json.loads(row["provenance"]))
        if why is not None and stale_policy() == "recompute":
            raise ValueError(
                f"init_from: run {key} is stale ({why}); run its configuration again first "
                f"(or set WDLIB_STALE=warn or reuse to start from it anyway)"
            )
        cfg = RunConfig.from_dict(json.loads(row["config"]))
        result = self.get(cfg)
        if result is None:
            raise ValueError(f"init_from: the stored files of run {key} are missing or corrupted; run it again")
        if step in result.snapshots:
            return result.snapshots[step]
        if step == cfg.steps and not result.diverged and result.model_state is not None:
            return result.model_state
        raise ValueError(
            f"init_from: run {key} has no snapshot at step {step}; it kept {sorted(result.snapshots) + [cfg.steps]}"
        )

    def load_model(self, key: str, *, data: Any = None, ema: bool = False) -> torch.nn.Module:
        """The trained model of stored run ``key`` (:meth:`RunResult.model`); ValueError when it is not stored.

        ``data``: the run's dataset when already loaded (it sizes the model); ``ema``: the EMA weights.
        """
        if not is_run_key(key):
            raise ValueError(f"key must be a run key (24 lowercase hex digits), got {key!r}")
        row = self._row(key)
        result = self.get(RunConfig.from_dict(json.loads(row["config"]))) if row is not None else None
        if result is None:
            raise ValueError(f"run {key} is not in the store {self.root} (or is stale or damaged); run it first")
        return result.model(data=data, ema=ema)

    def discard(self, key: str) -> None:
        """Forget a run (its row and files), whether or not it is there."""
        self._db(lambda db: db.execute("DELETE FROM runs WHERE key = ?", (key,)))
        for ext in ("npz", "pt", "json"):
            (self.root / "results" / f"{key}.{ext}").unlink(missing_ok=True)

    def forget(self, key: str) -> None:
        """Remove run ``key`` (its index row and result files); ValueError when the store has no such run."""
        check_key(key)
        known = self._db(lambda db: db.execute("SELECT 1 FROM runs WHERE key = ?", (key,)).fetchone()) is not None
        if not known and not any((self.root / "results" / f"{key}.{ext}").exists() for ext in ("npz", "pt", "json")):
            raise ValueError(f"no run {key} in the store {self.root}")
        self.discard(key)

    def forget_stale(self) -> int:
        """Remove every stale run (see :meth:`get`); the number removed."""
        stale = [r["key"] for r in self.list() if r["stale"]]
        for key in stale:
            self.discard(key)
        return len(stale)

    def list(self, scale: str | None = None) -> list[dict[str, Any]]:
        """Every stored run (optionally of one scale): key, scale, status, configuration, summary, provenance,
        and ``stale`` (its code identity differs from this process's). Result files that the index lacks
        (an emptied index) are put back into it first."""
        known = {r["key"] for r in self._db(lambda db: db.execute("SELECT key FROM runs").fetchall())}
        for path in (self.root / "results").glob("*.json"):
            if path.stem not in known and is_run_key(path.stem):
                self._row(path.stem)
        query, args = "SELECT * FROM runs", ()
        if scale is not None:
            query, args = "SELECT * FROM runs WHERE scale = ?", (scale,)
        rows = self._db(lambda db: db.execute(query + " ORDER BY created", args).fetchall())
        out = []
        for r in rows:
            prov = json.loads(r["provenance"])
            out.append(
                {
                    "key": r["key"],
                    "scale": r["scale"],
                    "status": r["status"],
                    "config": json.loads(r["config"]),
                    "summary": json.loads(r["summary"]),
                    "provenance": prov,
                    "stale": _staleness(prov) is not None,
                }
            )
        return out
