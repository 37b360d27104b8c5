"""Bad input never costs a result: a table of bad inputs, each of which must fail at once with a clear message.

Each :class:`Case` is a call that feeds one bad input to the command line (``wdlib.cli.main``), to
:class:`wdlib.config.RunConfig` or to the run store, and the substrings its error message must contain:
the field or argument it names and the allowed values or range. :func:`classify` sorts the outcome:

``clear``
    a ValueError or TypeError (or, from the command line, a non-zero ``SystemExit``) whose one-line
    message contains every ``must_contain`` substring, with no traceback printed;
``misleading``
    such an error whose message lacks them;
``traceback``
    any other exception, or a command line that printed a traceback;
``silent``
    no error at all (the bad input was accepted, or the command exited 0).

The test asserts that every case is ``clear``. ``tools/bad_input_tally.py`` imports :data:`CASES`
and prints the tally of the four classes without pytest, also against older code (every call
imports what it needs when it runs, so a name that older code lacks fails that case only). Other
modules' cases (the optimizers') can be appended to :data:`CASES` with :func:`add`.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import pytest
except ImportError:  # the tally script runs without pytest
    pytest = None  # type: ignore[assignment]

CLASSES: tuple[str, ...] = ("clear", "misleading", "traceback", "silent")


@dataclass(frozen=True)
class Case:
    """One bad input: ``call`` feeds it; its error message must contain each of ``must_contain``.

    ``kind`` groups the cases in the tally: ``cli``, ``config``, ``store`` (and ``optim`` for the
    optimizer cases added elsewhere).
    """

    id: str
    call: Callable[[], Any]
    must_contain: tuple[str, ...]
    kind: str


CASES: list[Case] = []


def add(id: str, call: Callable[[], Any], must_contain: tuple[str, ...] | str, kind: str) -> None:
    """Append a case to :data:`CASES` (ids must be unique)."""
    if any(c.id == id for c in CASES):
        raise ValueError(f"duplicate case id {id!r}")
    CASES.append(Case(id, call, (must_contain,) if isinstance(must_contain, str) else tuple(must_contain), kind))


# --- classifying an outcome ------------------------------------------------------------------------------

#: Seconds a case may run: one still running then has accepted its input (older code trains ``steps: 10**300``).
TIME_LIMIT_S = 60.0


class _TimeUp(BaseException):
    """Raised into a case that runs past :data:`TIME_LIMIT_S` (a BaseException: ``except Exception`` won't eat it)."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block after ``seconds`` (SIGALRM; only in the main thread of a Unix process, else no limit)."""
    import signal
    import threading

    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise _TimeUp()

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def outcome(case: Case, time_limit_s: float = TIME_LIMIT_S) -> tuple[str, str]:
    """``(class, message)`` of running ``case``: the class as in the module docstring, and the message
    the user saw (the exception's text, or the last line the command line printed on stderr). A case
    still running after ``time_limit_s`` is stopped and counts as ``silent``: it accepted its input."""
    err, out = io.StringIO(), io.StringIO()
    try:
        with (
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(out),
            warnings.catch_warnings(),
            _time_limit(time_limit_s),
        ):
            warnings.simplefilter("ignore")
            result = case.call()
    except _TimeUp:
        return "silent", f"no error: still running after {time_limit_s:g} s (the input was accepted)"
    except SystemExit as exc:
        stderr = err.getvalue()
        lines = [line for line in stderr.splitlines() if line.strip()]
        message = exc.code if isinstance(exc.code, str) else (lines[-1] if lines else "")
        if "Traceback" in stderr:
            return "traceback", message
        if exc.code in (0, None):
            return "silent", message
        return _judge(case, message)
    except (ValueError, TypeError) as exc:
        message = str(exc)
        if "Traceback" in err.getvalue():
            return "traceback", message
        return _judge(case, message, one_line=True)
    except Exception as exc:  # noqa: BLE001 -- any other exception is what the user would see as a traceback
        return "traceback", f"{type(exc).__name__}: {exc}"
    stderr = err.getvalue()
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Traceback" in stderr:
        return "traceback", lines[-1] if lines else ""
    if isinstance(result, int) and not isinstance(result, bool) and result != 0:  # a main() that returns its status
        return _judge(case, lines[-1] if lines else "")
    return "silent", f"no error (returned {result!r:.80})"


def _judge(case: Case, message: str, one_line: bool = False) -> tuple[str, str]:
    text = message.strip()
    clear = all(s in text for s in case.must_contain) and not (one_line and "\n" in text)
    return ("clear" if clear else "misleading"), text


def classify(case: Case) -> str:
    """``"clear"``, ``"misleading"``, ``"traceback"`` or ``"silent"`` (see the module docstring)."""
    return outcome(case)[0]


# --- helpers that build the calls (lazy: nothing of wdlib is imported until a case runs) ----------------

_ROOT: list[Path] = []


def _tmp() -> Path:
    """A fresh empty directory (all removed when the process exits)."""
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="wdlib-bad-inputs-")))
        atexit.register(shutil.rmtree, _ROOT[0], True)
    return Path(tempfile.mkdtemp(dir=_ROOT[0]))


#: A valid, tiny configuration (a few seconds even where old code trains it): the cases change one thing.
BASE: dict[str, Any] = {
    "data": "mnist1d",
    "data_args": {"num_samples": 600},
    "model": "mlp",
    "model_args": {"width": 8, "depth": 1},
    "steps": 3,
    "batch_size": 32,
    "scale": "test",
}
BASE_YAML = (
    "data: mnist1d\ndata_args: {num_samples: 600}\nmodel: mlp\nmodel_args: {width: 8, depth: 1}\n"
    "batch_size: 32\nscale: test\n"
)  # steps left out, so that a case can set it


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _main(argv: list[str], env: dict[str, str] | None = None) -> Any:
    from wdlib.cli import main

    with contextlib.ExitStack() as stack:
        for k, v in (env or {}).items():
            stack.enter_context(_env(k, v))
        return main(argv)


def cli(*argv: str, env: dict[str, str] | None = None) -> Callable[[], Any]:
    """``wdlib ARGV...`` in this process."""
    return lambda: _main(list(argv), env)


def cli_file(
    text: str | bytes, *extra: str, command: str = "run", suffix: str = ".yaml", env: dict[str, str] | None = None
) -> Callable[[], Any]:
    """``wdlib run FILE --store TMP EXTRA...`` with FILE holding ``text``."""

    def call() -> Any:
        d = _tmp()
        path = d / f"config{suffix}"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return _main([command, str(path), "--store", str(d / "store"), *extra], env)

    return call


def cli_fields(
    *extra: str, command: str = "run", env: dict[str, str] | None = None, **changes: Any
) -> Callable[[], Any]:
    """``wdlib run`` of :data:`BASE` with ``changes``, written as JSON."""
    return cli_file(json.dumps({**BASE, **changes}), *extra, command=command, suffix=".json", env=env)


def config(**changes: Any) -> Callable[[], Any]:
    """``RunConfig(**BASE, **changes)``."""

    def call() -> Any:
        from wdlib.config import RunConfig

        return RunConfig(**{**BASE, **changes})

    return call


def _from_dict(d: Any) -> Any:
    from wdlib.config import RunConfig

    return RunConfig.from_dict(d)


def _store(**kw: Any) -> Any:
    from wdlib.runs import Store

    return Store(_tmp(), **kw)


def _store_at(path: Path, **kw: Any) -> Any:
    from wdlib.runs import Store

    return Store(path, **kw)


def _a_file() -> Path:
    p = _tmp() / "a-file"
    p.write_text("not a store")
    return p


def _config_file() -> Path:
    p = _tmp() / "config.json"
    p.write_text(json.dumps(BASE))
    return p


def _get_with_policy(policy: str) -> Any:
    from wdlib.config import RunConfig

    with _env("WDLIB_STALE", policy):
        return _store().get(RunConfig(**BASE))


def _run(**kw: Any) -> Any:
    from wdlib.config import RunConfig
    from wdlib.runs import run

    return run(RunConfig(**BASE), _store(), progress=False, **kw)


def _np(name: str, value: Any) -> Any:
    import numpy as np

    return getattr(np, name)(value)


TAU = ("tau", "--dataset-size", "50000", "--batch-size", "128")
DIGITS_300 = "9" * 300

# --- the command line: tau ---------------------------------------------------------------------------------

LR_RANGE = "[1e-50, 1e+50]"
for _id, _lr, _wd, _flag in [
    ("tau-lr-denormal", "1e-320", "0.1", "--lr"),
    ("tau-lr-1e308", "1e308", "0.1", "--lr"),
    ("tau-lr-inf", "inf", "0.1", "--lr"),
    ("tau-lr-nan", "nan", "0.1", "--lr"),
    ("tau-lr-zero", "0", "0.1", "--lr"),
    ("tau-lr-negative", "-1e-3", "0.1", "--lr"),
    ("tau-wd-denormal", "1e-3", "1e-320", "--weight-decay"),
    ("tau-wd-inf", "1e-3", "inf", "--weight-decay"),
    ("tau-wd-zero", "1e-3", "0", "--weight-decay"),
    ("tau-wd-1e308", "1e-3", "1e308", "--weight-decay"),
]:
    add(_id, cli(*TAU, "--lr", _lr, "--weight-decay", _wd), (f"{_flag} must be", LR_RANGE), "cli")
add(
    "tau-dataset-size-300-digits",
    cli("tau", "--lr", "1e-3", "--weight-decay", "0.1", "--dataset-size", DIGITS_300, "--batch-size", "128"),
    ("--dataset-size", "[1, 1000000000000000]"),
    "cli",
)
add(
    "tau-batch-size-zero",
    cli("tau", "--lr", "1e-3", "--weight-decay", "0.1", "--dataset-size", "100", "--batch-size", "0"),
    ("--batch-size", "[1, 1000000000000000]"),
    "cli",
)
add(
    "tau-to-dataset-size-300-digits",
    cli(*TAU, "--lr", "1e-3", "--weight-decay", "0.1", "--to-dataset-size", DIGITS_300),
    ("--to-dataset-size", "[1, 1000000000000000]"),
    "cli",
)
add(
    "tau-width-zero",
    cli(*TAU, "--lr", "1e-3", "--weight-decay", "0.1", "--width", "0", "--to-width", "4"),
    ("--width", "[1, 1000000000000000]"),
    "cli",
)
add(
    "tau-to-width-without-width",
    cli(*TAU, "--lr", "1e-3", "--weight-decay", "0.1", "--to-width", "4"),
    ("--to-width", "--width"),
    "cli",
)
add("tau-mup-without-width", cli(*TAU, "--lr", "1e-3", "--weight-decay", "0.1", "--mup"), ("--mup", "--width"), "cli")

# --- the command line: configuration files ---------------------------------------------------------------

add("yaml-syntax-error", cli_file(BASE_YAML + "steps: 3\nlr: [1e-3\n"), ("YAML syntax error", "line", "column"), "cli")
add("yaml-tab-indent", cli_file(BASE_YAML + "steps:\n\t3\n"), ("YAML syntax error", "line 8", "column 1"), "cli")
add(
    "yaml-python-tag",
    cli_file(BASE_YAML + "steps: !!python/object/apply:os.getcwd []\n"),
    ("YAML syntax error", "line 7"),
    "cli",
)
add(
    "json-syntax-error",
    cli_file('{"steps": 3,\n "lr": }', suffix=".json"),
    ("JSON syntax error", "line 2", "column 8"),
    "cli",
)
add("config-is-a-list", cli_file("- steps: 3\n- lr: 0.1\n"), ("must hold a mapping of fields", "list"), "cli")
add("config-is-a-number", cli_file("5\n"), ("must hold a mapping of fields", "int"), "cli")
add("config-is-empty", cli_file(""), ("empty", "mapping of fields"), "cli")
add("config-int-key", cli_file(BASE_YAML + "steps: 3\n1: 2\n"), ("keys must be field names", "1"), "cli")
add("config-list-key", cli_file(BASE_YAML + "steps: 3\n[a]: 1\n"), ("keys must be field names", "line 8"), "cli")
add(
    "config-file-missing",
    cli("run", "/nonexistent/wdlib-bad-input.yaml", "--store", "/nonexistent/store"),
    ("does not exist", "/nonexistent/wdlib-bad-input.yaml"),
    "cli",
)
add(
    "config-is-a-directory",
    lambda: _main(["run", str(_tmp()), "--store", str(_tmp() / "s")]),
    ("is a directory",),
    "cli",
)
add("config-not-utf8", cli_file(b"steps: 3\nlr: \xff\xfe\n"), ("not UTF-8",), "cli")
add("config-unknown-field", cli_fields(stpes=3), ("stpes", "known fields"), "cli")
add(
    "data-missing-files",
    cli_fields(
        data="openwebtext",
        data_args={"root": "/nonexistent/owt"},
        model="gpt",
        model_args={"n_layer": 1, "n_head": 1, "n_embd": 8},
    ),
    ("OpenWebText", "not found at /nonexistent/owt"),
    "cli",
)
add(
    "gpt-on-classification-data",
    cli_fields(model="gpt", model_args={"n_layer": 1, "n_head": 1, "n_embd": 8}),
    ("model 'gpt' needs a token dataset", "stdlib_chars", "openwebtext", "mnist1d"),
    "cli",
)
add(
    "mlp-on-token-data",
    cli_fields(data="stdlib_chars", data_args={"max_bytes": 20000}),
    ("model 'mlp' needs a classification dataset", "mnist1d", "stdlib_chars"),
    "cli",
)
add("yaml-lr-inf", cli_file(BASE_YAML + "steps: 3\nlr: .inf\n"), ("lr must be a finite number",), "cli")
add("set-lr-nan", cli_fields("--set", "lr=NaN"), ("lr must be a finite number",), "cli")
add(
    "set-weight-decay-inf",
    cli_fields("--set", "weight_decay=Infinity"),
    ("weight_decay must be a finite number",),
    "cli",
)
add("yaml-eps-nan", cli_file(BASE_YAML + "steps: 3\neps: .nan\n"), ("optimizer.eps must be a finite number",), "cli")
add(
    "yaml-optimizer-eps-nan",
    cli_file(BASE_YAML + "steps: 3\noptimizer: {name: adam, eps: .nan}\n"),
    ("optimizer.eps must be a finite number",),
    "cli",
)
add(
    "yaml-seed-1e26-string",
    cli_file(BASE_YAML + "steps: 3\nseed: 1e26\n"),
    ("seed must be an integer in [0, 4294967294]", "1e26"),
    "cli",
)
add(
    "yaml-seed-1e26-float",
    cli_file(BASE_YAML + "steps: 3\nseed: 1.0e+26\n"),
    ("seed must be an integer in [0, 4294967294]",),
    "cli",
)
add("seed-2-pow-63", cli_fields(seed=2**63), ("seed must be an integer in [0, 4294967294]",), "cli")
add("seed-float", cli_fields(seed=3.0), ("seed must be an integer",), "cli")
add("seed-negative", cli_fields(seed=-1), ("seed must be an integer in [0, ",), "cli")
add(
    "steps-300-digits",
    cli_fields("--set", f"steps={DIGITS_300}"),
    ("steps must be an integer in [1, 4294967295]",),
    "cli",
)
add(
    "lr-warmup-longer-than-run",
    cli_fields(lr_schedule={"name": "cosine", "warmup": 10}),
    ("lr_schedule", "warmup (10)", "less than steps (3)"),
    "cli",
)
add(
    "wd-delay-longer-than-run",
    cli_fields(wd_schedule={"name": "constant", "delay": 3}),
    ("wd_schedule", "delay (3)", "less than steps (3)"),
    "cli",
)
add(
    "optimizer-unknown",
    cli_fields(optimizer="adagrad"),
    ("optimizer.name must be one of", "'adam'", "'torch.adamw'"),
    "cli",
)
add(
    "optimizer-spec-unknown-name",
    cli_fields(optimizer={"name": "lion", "decay": "decoupled"}),
    ("optimizer.name must be one of", "'sgd'", "'lion'"),
    "cli",
)
add(
    "optimizer-torch-adamw-flat-l2",
    cli_fields(optimizer="torch.adamw", decay="l2"),
    ("optimizer.decay must be 'decoupled'", "torch.adamw", "'l2'"),
    "cli",
)
add(
    "set-optimizer-decay-torch-adamw",
    cli_fields("--set", "optimizer.decay=independent", optimizer={"name": "torch.adamw"}),
    ("optimizer.decay must be 'decoupled'", "'independent'"),
    "cli",
)
add(
    "set-optimizer-option-misspelt",
    cli_fields("--set", "optimizer.momentun=0.9", optimizer={"name": "sgd"}),
    ("optimizer.momentun", "not an option", "momentum"),
    "cli",
)
add(
    "set-flat-momentum-on-adam",
    cli_fields("--set", "momentum=0.9"),
    ("momentum", "does not apply", "'adam'", "'sgd'"),
    "cli",
)
add(
    "grid-optimizer-decay-unknown",
    cli_fields("--grid", "optimizer.decay=l2,adamw", command="sweep"),
    ("optimizer.decay must be one of", "'independent'", "'adamw'"),
    "cli",
)
add("label-noise-above-one", cli_fields(label_noise=1.5), ("label_noise", "[0.0, 1.0)"), "cli")
add("batch-not-divisible", cli_fields(batch_size=10, grad_accum=3), ("batch_size (10)", "grad_accum (3)"), "cli")
add("model-arg-misspelt", cli_fields(model_args={"widht": 8, "depth": 1}), ("widht",), "cli")
add("data-arg-misspelt", cli_fields(data_args={"num_sample": 600}), ("num_sample",), "cli")

# --- the command line: options ------------------------------------------------------------------------------

add("set-without-equals", cli_fields("--set", "steps"), ("--set", "FIELD=VALUE", "'steps'"), "cli")
add("set-without-name", cli_fields("--set", "=3"), ("--set", "FIELD=VALUE"), "cli")
add("grid-without-values", cli_fields("--grid", "lr=", command="sweep"), ("--grid", "lr", "no values"), "cli")
add("grid-without-equals", cli_fields("--grid", "lr", command="sweep"), ("--grid", "FIELD=V1,V2"), "cli")
add("grid-unknown-field", cli_fields("--grid", "stpes=1,2", command="sweep"), ("stpes", "known fields"), "cli")
add(
    "workers-zero",
    cli_fields("--grid", "lr=0.001", "--workers", "0", command="sweep"),
    ("--workers", "[1, 1024]"),
    "cli",
)
add("device-tpu", cli_fields("--device", "tpu"), ("--device", "auto, cpu, cuda, cuda:N, mps", "'tpu'"), "cli")
add(
    "device-gpu-sweep",
    cli_fields("--grid", "lr=0.001", "--device", "gpu", command="sweep"),
    ("--device", "auto, cpu, cuda, cuda:N, mps"),
    "cli",
)
add("device-cuda-99", cli_fields("--device", "cuda:99"), ("--device cuda:99",), "cli")
add(
    "stale-policy-invalid",
    cli_fields(env={"WDLIB_STALE": "sometimes"}),
    ("WDLIB_STALE", "recompute", "warn", "reuse"),
    "cli",
)
add(
    "store-is-a-file",
    lambda: _main(["run", str(_config_file()), "--store", str(_a_file())]),
    ("not a directory",),
    "cli",
)
add(
    "runs-no-store",
    lambda: _main(["runs", "--store", str(_tmp() / "nowhere")]),
    ("no run store at", "index.sqlite", "results/"),
    "cli",
)
add(
    "runs-forget-unknown",
    lambda: _main(["runs", "--store", str(_store().root), "--forget", "0" * 24]),
    ("no run 000000000000000000000000",),
    "cli",
)
add(
    "runs-forget-not-a-key",
    lambda: _main(["runs", "--store", str(_store().root), "--forget", "../../etc"]),
    ("24 hex digits", "'../../etc'"),
    "cli",
)
add(
    "runs-scale-unknown",
    lambda: _main(["runs", "--store", str(_store().root), "--scale", "huge"]),
    ("--scale", "smoke", "full", "test"),
    "cli",
)

# --- RunConfig --------------------------------------------------------------------------------------------

add("config-numpy-float-steps", lambda: config(steps=_np("float64", 5.0))(), ("steps must be an integer",), "config")
add("config-lr-inf", config(lr=float("inf")), ("lr must be a finite number",), "config")
add("config-lr-400-digit-int", config(lr=10**400), ("lr must be a finite number",), "config")
add(
    "config-betas-nan",
    config(optimizer={"name": "adam", "betas": [0.9, float("nan")]}),
    ("optimizer.betas[1]", "[0.0, 1.0)"),
    "config",
)
add(
    "config-betas-three",
    config(optimizer={"name": "torch.adam", "betas": [0.9, 0.99, 0.999]}),
    ("optimizer.betas", "pair"),
    "config",
)
add(
    "config-momentum-one",
    config(optimizer={"name": "sgd", "momentum": 1.0}),
    ("optimizer.momentum", "[0.0, 1.0)"),
    "config",
)
add(
    "config-nesterov-without-momentum",
    config(optimizer={"name": "torch.sgd", "nesterov": True}),
    ("optimizer.nesterov", "momentum > 0"),
    "config",
)
add(
    "config-nesterov-text",
    config(optimizer={"name": "sgd", "momentum": 0.9, "nesterov": "yes"}),
    ("optimizer.nesterov", "true or false"),
    "config",
)
add("config-optimizer-not-a-spec", config(optimizer=3), ("optimizer must be", "'adam'", '"name"'), "config")
add(
    "config-optimizer-without-name",
    config(optimizer={"decay": "l2"}),
    ("optimizer.name", "missing", "'adam'"),
    "config",
)
add(
    "config-optimizer-option-of-another",
    config(optimizer={"name": "adam", "momentum": 0.9}),
    ("optimizer.momentum", "not an option of optimizer 'adam'", "betas", "'sgd'"),
    "config",
)
add(
    "config-decay-unknown",
    config(optimizer={"name": "sgd", "decay": "adamw"}),
    ("optimizer.decay", "'l2', 'decoupled', 'independent'"),
    "config",
)
# torch's optimizers follow their own rule only: asking for another is an error, not silently ignored
add(
    "config-torch-adamw-l2",
    config(optimizer={"name": "torch.adamw", "decay": "l2"}),
    ("optimizer.decay must be 'decoupled'", "torch.adamw", "'l2'", '"name": "adam"'),
    "config",
)
add(
    "config-torch-adamw-independent",
    config(optimizer={"name": "torch.adamw", "decay": "independent"}),
    ("optimizer.decay must be 'decoupled'", "'independent'"),
    "config",
)
add(
    "config-torch-adam-decoupled",
    config(optimizer={"name": "torch.adam", "decay": "decoupled"}),
    ("optimizer.decay must be 'l2'", "torch.adam", "'decoupled'"),
    "config",
)
add(
    "config-torch-sgd-independent",
    config(optimizer={"name": "torch.sgd", "decay": "independent"}),
    ("optimizer.decay must be 'l2'", "torch.sgd", '"name": "sgd"'),
    "config",
)
add(
    "config-torch-adamw-bf16-update",
    config(precision="bf16-pure", optimizer={"name": "torch.adamw", "bf16_update": "kahan"}),
    ("optimizer.bf16_update", "not an option of optimizer 'torch.adamw'", "'adam'"),
    "config",
)
add(
    "config-bf16-update-without-bf16-pure",
    config(optimizer={"name": "adam", "bf16_update": "kahan"}),
    ("optimizer.bf16_update", "'kahan'", "bf16-pure"),
    "config",
)
add(
    "config-mup-independent",
    config(
        model_args={"width": 8, "depth": 1}, mup={"base_width": 4}, optimizer={"name": "adam", "decay": "independent"}
    ),
    ("mup", "optimizer.decay 'independent'", "not supported"),
    "config",
)
add(
    "config-flat-momentum-on-adam",
    lambda: _from_dict({**BASE, "optimizer": "adam", "momentum": 0.5}),
    ("momentum", "does not apply to optimizer 'adam'", "optimizer.momentum"),
    "config",
)
add(
    "config-flat-torch-sgd-nesterov",
    lambda: _from_dict({**BASE, "optimizer": "torch.sgd", "nesterov": True}),
    ("optimizer.nesterov", "momentum > 0"),
    "config",
)
add("config-diagnostics-int", config(diagnostics=5), ("diagnostics must be a list",), "config")
add("config-probes-int", config(probes=5), ("probes must be a list",), "config")
add("config-model-args-list", config(model_args=[8, 1]), ("model_args must be a dict",), "config")
add("config-model-args-int-key", config(model_args={1: 8}), ("model_args keys must be argument names",), "config")
add("config-not-a-mapping", lambda: _from_dict([("lr", 0.1)]), ("must be a mapping of fields", "list"), "config")
add("config-mixed-keys", lambda: _from_dict({1: 2, "lr": 0.1}), ("keys must be field names", "1 (int)"), "config")
add("config-init-from-bad", config(init_from={"run": "abc", "step": 1}), ("init_from", "24-hex"), "config")
add("config-snapshot-after-end", config(snapshots=[5]), ("snapshots", "steps=3"), "config")
add("config-perturb-after-end", config(perturb_step=3), ("perturb_step", "[0, 2]"), "config")
add(
    "config-mup-base-width-text",
    config(model_args={"width": 8, "depth": 1}, mup={"base_width": "wide"}),
    ("mup.base_width", "integer"),
    "config",
)
add(
    "config-subset-on-token-data",
    config(data="stdlib_chars", data_args={}, model="gpt", subset=10),
    ("subset", "classification data"),
    "config",
)
add("config-schedule-name", config(lr_schedule={"name": "exponential"}), ("lr_schedule.name", "'cosine'"), "config")
add("config-schedule-int-key", config(lr_schedule={1: 2}), ("lr_schedule", "unknown key"), "config")
add("config-grad-clip-zero", config(grad_clip=0), ("grad_clip", "> 0"), "config")
add(
    "config-lr-vector-tensor",
    lambda: config(lr=__import__("torch").tensor([0.1, 0.2]))(),
    ("lr must be a finite number",),
    "config",
)
add("config-seed-2-pow-64", config(seed=2**64), ("seed must be an integer in [0, 4294967294]",), "config")
add("config-data-seed-huge", config(data_seed=2**40), ("data_seed must be an integer in [0, ",), "config")
add("config-batch-size-huge", config(batch_size=2**70), ("batch_size must be an integer in [1, ",), "config")

# --- the store ------------------------------------------------------------------------------------------------

add(
    "store-missing-no-create",
    lambda: _store_at(_tmp() / "nowhere", create=False),
    ("no run store at", "index.sqlite", "results/"),
    "store",
)
add("store-on-a-file", lambda: _store_at(_a_file()), ("not a directory",), "store")
add("store-forget-unknown", lambda: _store().forget("0" * 24), ("no run 000000000000000000000000",), "store")
add("store-forget-not-a-key", lambda: _store().forget("../x"), ("24 hex digits",), "store")
add(
    "store-stale-policy-invalid", lambda: _get_with_policy("always"), ("WDLIB_STALE", "recompute, warn, reuse"), "store"
)
add("run-rerun-not-bool", lambda: _run(rerun="yes"), ("rerun", "True or False"), "store")
add("store-snapshot-of-missing-run", lambda: _store().snapshot("0" * 24, 1), ("init_from", "not in the store"), "store")


# --- the optimizers and the timescales (issue 16: items 1-3, 7) --------------------------------------------


def _param(dtype: str = "float32") -> Any:
    import torch

    return torch.nn.Parameter(torch.zeros(3, dtype=getattr(torch, dtype)))


def _adam(**kw: Any) -> Any:
    from wdlib.optim import Adam

    return Adam([_param()], **kw)


def _sgd(**kw: Any) -> Any:
    from wdlib.optim import SGD

    return SGD([_param()], **kw)


def _load_torch_state(make_torch: Callable[[Any], Any], make_ours: Callable[[Any], Any]) -> Any:
    import torch

    p = _param()
    src = make_torch([p])
    p.grad = torch.ones(3)
    src.step()
    make_ours([p]).load_state_dict(src.state_dict())


def _torch(name: str, **kw: Any) -> Callable[[Any], Any]:
    import torch

    return lambda ps: getattr(torch.optim, name)(ps, **kw)


def _ours(name: str, **kw: Any) -> Callable[[Any], Any]:
    import wdlib.optim

    return lambda ps: getattr(wdlib.optim, name)(ps, **kw)


def _add_group(cls: str, **kw: Any) -> Any:
    import wdlib.optim

    opt = getattr(wdlib.optim, cls)([_param()], lr=0.1)
    opt.add_param_group({"params": [_param()], **kw})


def _tau(fn: str, *args: Any) -> Any:
    import wdlib.timescale

    return getattr(wdlib.timescale, fn)(*args)


def _convert(*args: Any) -> Any:
    from wdlib.optim import convert_weight_decay

    return convert_weight_decay(*args)


_NUMBER = "a finite number in"
for _id, _call, _words in [
    ("optim-lr-negative", lambda: _adam(lr=-1e-3), ("lr", _NUMBER, "[0.0, inf)")),
    ("optim-lr-inf", lambda: _adam(lr=float("inf")), ("lr", _NUMBER)),
    ("optim-lr-nan", lambda: _sgd(lr=float("nan")), ("lr", _NUMBER)),
    ("optim-lr-string", lambda: _adam(lr="1e-3"), ("lr", _NUMBER)),
    ("optim-lr-bool", lambda: _adam(lr=True), ("lr", _NUMBER)),
    ("optim-lr-1d-tensor", lambda: _adam(lr=__import__("torch").tensor([1e-3, 1e-3])), ("lr", _NUMBER)),
    ("optim-weight-decay-negative", lambda: _adam(weight_decay=-0.1), ("weight_decay", "[0.0, inf)")),
    ("optim-betas-one", lambda: _adam(betas=(0.9, 1.0)), ("betas[1]", "[0.0, 1.0)")),
    ("optim-betas-scalar", lambda: _adam(betas=0.9), ("betas", "pair", "[0, 1)")),
    ("optim-betas-three", lambda: _adam(betas=(0.9, 0.99, 0.999)), ("betas", "pair")),
    ("optim-eps-nan", lambda: _adam(eps=float("nan")), ("eps", _NUMBER)),
    ("optim-decay-unknown", lambda: _adam(decay="adamw"), ("decay", "'l2', 'decoupled', 'independent'")),
    ("optim-impl-unknown", lambda: _adam(impl="cuda"), ("impl", "'auto', 'fused', 'foreach'")),
    (
        "optim-bf16-update-unknown",
        lambda: _sgd(bf16_update="round"),
        ("bf16_update", "'nearest', 'master', 'kahan', 'stochastic'"),
    ),
    (
        "optim-stochastic-float16",
        lambda: __import__("wdlib.optim").optim.Adam([_param("float16")], bf16_update="stochastic"),
        ("stochastic", "float16", "'master' or 'kahan'"),
    ),
    ("optim-momentum-one", lambda: _sgd(momentum=1.0), ("momentum", "[0.0, 1.0)")),
    ("optim-nesterov-without-momentum", lambda: _sgd(nesterov=True), ("nesterov", "momentum > 0")),
    ("optim-nesterov-string", lambda: _sgd(momentum=0.9, nesterov="yes"), ("nesterov", "True or False")),
    (
        "optim-independent-lr-zero",
        lambda: _adam(lr=0.0, weight_decay=1e-4, decay="independent"),
        ("lr", "> 0", "independent"),
    ),
    ("optim-group-momentum", lambda: _add_group("SGD", momentum=1.5), ("momentum", "[0.0, 1.0)")),
    ("optim-group-betas", lambda: _add_group("Adam", betas=(0.9, 2.0)), ("betas[1]", "[0.0, 1.0)")),
    ("optim-adamw-decay-argument", lambda: _ours("AdamW", decay="l2")([_param()]), ("decay",)),
    (
        "optim-load-torch-adam-into-adamw",
        lambda: _load_torch_state(_torch("Adam", weight_decay=0.1), _ours("AdamW")),
        ("torch.optim.Adam", "coupled L2", "wdlib.Adam"),
    ),
    ("optim-load-torch-amsgrad", lambda: _load_torch_state(_torch("Adam", amsgrad=True), _ours("Adam")), ("amsgrad",)),
    (
        "optim-load-torch-sgd-into-adam",
        lambda: _load_torch_state(_torch("SGD", lr=0.1), _ours("Adam")),
        ("SGD", "wdlib.Adam"),
    ),
    (
        "optim-load-not-a-state-dict",
        lambda: _adam().load_state_dict({"params": []}),
        ("state_dict", "'state'", "'param_groups'"),
    ),
    ("optim-convert-peak-lr-zero", lambda: _convert(0.1, 0.0, "decoupled", "independent"), ("peak_lr", "> 0")),
    ("optim-convert-l2", lambda: _convert(0.1, 1e-3, "l2", "independent"), ("source", "'decoupled' or 'independent'")),
    ("timescale-lr-subnormal", lambda: _tau("tau_iter", 1e-320, 0.1), ("lr*weight_decay", "out of range", "lr=1e-320")),
    ("timescale-product-overflow", lambda: _tau("tau_iter", 1e308, 1e308), ("lr*weight_decay", "out of range")),
    (
        "timescale-400-digit-dataset",
        lambda: _tau("tau_epoch", 1e-3, 0.1, 10**400, 128),
        ("dataset_size", "finite number > 0", "401 digits"),
    ),
    (
        "timescale-numpy-negative",
        lambda: _tau("tau_iter", __import__("numpy").float32(-1e-3), 0.1),
        ("lr", "finite number > 0"),
    ),
]:
    add(_id, _call, _words, "optim")


# --- the test -------------------------------------------------------------------------------------------------

if pytest is not None:

    def test_the_table_is_large_and_its_ids_unique() -> None:
        assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES)
        assert all(c.kind in ("cli", "config", "store", "optim") and c.must_contain for c in CASES)

    @pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
    def test_a_bad_input_fails_with_a_clear_message(case: Case) -> None:
        verdict, message = outcome(case)
        assert verdict == "clear", f"{case.id}: {verdict}: {message!r} (must contain {case.must_contain})"
