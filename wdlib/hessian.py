"""Hessian diagnostics: Hessian-vector products, the Hessian trace and the top eigenvalue of a training loss. ::

    from wdlib import hessian
    est = hessian.hutchinson_trace(model, x, y, probes=100, seed=0)   # Tr(H) +- est.stderr
    est = hessian.hessian_trace(model, x, y, probes=30, estimator="xtrace")  # less variance if |lambda| decay
    top = hessian.top_eigenvalue(model, x, y)                         # largest-|lambda| eigenvalue

What is measured. ``H`` is the Hessian, with respect to the model's parameters (by default every parameter
with ``requires_grad``), of the *mean* loss ``L(w) = loss(model_w(x), y)`` over the data ``(x, y)`` handed
in: one fixed set of points, measured in full batch (optionally in chunks whose results are summed, which
gives the same ``H``). Buffers (BatchNorm running statistics) and the other parameters are held fixed.

Formulas.

- Hessian-vector product by forward-over-reverse differentiation: ``Hv = d/dt grad L(w + t v) |_{t=0}``,
  i.e. ``torch.func.jvp(torch.func.grad(L), (w,), (v,))``, at about the cost of two gradient evaluations
  and without forming ``H``.
- Hutchinson's estimator (Hutchinson 1990): for Rademacher ``v`` (independent entries +-1 with
  probability 1/2), ``E[v^T H v] = Tr(H)``. With ``n`` probes ``v_1..v_n`` the estimate is the mean of
  ``v_i^T H v_i`` and its standard error is ``std(v_i^T H v_i, ddof=1) / sqrt(n)``. The same probes give
  the trace of each parameter tensor's diagonal block: ``E[v_p^T (H v)_p] = Tr(H_pp)``, since the
  off-diagonal terms have mean zero; the per-tensor values sum to ``v^T H v`` probe by probe.
- Hutch++ (Meyer, Musco, Musco, Woodruff 2021, arXiv 2010.09649): spend a third of the ``m`` HVPs on a
  sketch ``Q = orth(H S)`` of the top of the spectrum (``S``: ``m/3`` Rademacher vectors), a third on
  ``H Q``, whose trace ``Tr(Q^T H Q)`` is then exact, and a third on Hutchinson probes of the rest:
  ``Tr(H) ~ Tr(Q^T H Q) + mean_i g_i^T (I - Q Q^T) H (I - Q Q^T) g_i``. Its error bound is ``O(1/m)``
  times the nuclear norm ``sum_j |lambda_j|`` (for PSD ``H``, times ``Tr(H)``) instead of Hutchinson's
  ``O(1/sqrt(m))``: a gain when the eigenvalues decay fast, a loss (a third of the probes) when they do not.
- XTrace (Epperly, Tropp, Webber 2024, arXiv 2301.07825): ``m/2`` probes ``w_i``, ``Q R = H W``, ``Z = H
  Q``; every probe serves both as a sketch vector and, left out, as a Hutchinson probe of the rest:
  ``t_i = Tr(Q_i^T H Q_i) + w_i^T (I - P_i) H (I - P_i) w_i`` with ``P_i = Q_i Q_i^T`` the projector onto
  the span of ``H w_j``, ``j != i``, computed from ``n x n`` matrices; the estimate is ``mean_i t_i``.
  See :func:`hessian_trace` for the budget split, the error bars and the per-tensor split of both.
- Power iteration ``v <- Hv / ||Hv||`` for the eigenvalue of largest magnitude, reported as the Rayleigh
  quotient ``v^T H v`` of the final unit vector, with the residual ``||Hv - lambda v||``.

Source. Andriushchenko et al. (arXiv 2310.04415, "Why do we need weight decay in modern deep learning?")
measure ``Tr(H)`` with PyHessian's Hutchinson estimator (Yao et al. 2020, arXiv 1912.07145) on a fixed
subset of the training set, with BatchNorm in eval mode (PyHessian calls ``model.eval()``). PyHessian
draws Rademacher probes until the running mean moves by less than a relative tolerance (``tol=1e-3``,
at most 100 probes), so its probe count varies from call to call and the estimate carries no error bar;
this module uses a fixed probe count and reports the standard error instead. PyHessian computes each
``Hv`` by reverse-over-reverse differentiation, one probe at a time; here the probes are batched with
``torch.func.vmap`` over the forward-over-reverse product (see :func:`hutchinson_trace` for the memory
this takes and for the fall-back when an operation cannot be batched). Speed: batching the probes does
the same arithmetic as the loop, so it pays off where per-operation overhead dominates (few data points,
small layers; GPUs, not measured here). On a 2-core CPU, ``benchmarks/hessian_trace.py`` (MNIST-1D CNN,
1,000 points, 20 probes) measured 0.3x (all probes and points at once, memory-bound) to about 0.9-1x
(all probes, ``data_chunk`` of 100-250) the speed of the PyHessian-style loop, and 1.3x on 100 points.

Probes are reproducible across devices: probe ``i`` is drawn on the CPU as ``r_i = torch.randint(0, 2,
(P,), generator=g, dtype=torch.int8)`` from ``g = torch.Generator().manual_seed(seed)`` (advanced through
probes ``0..i-1``), ``v_i = 2 r_i - 1``, split into the parameter tensors in the order of ``params``
(``P`` is their total size), cast to each parameter's dtype and moved to its device. Probe ``i`` therefore
does not depend on ``probes``, ``probe_chunk``, ``data_chunk`` or the device. Hutch++ takes probes ``0..k-1``
as its sketch and the next ones as its residual probes; XTrace takes probes ``0..n-1`` (Hutchinson's first
``n``); their derived vectors (``Q``, the projected probes) are computed in float64 and then cast.

Used by :mod:`wdlib.diagnostics` and :mod:`wdlib.measures` (the ``hessian_trace`` and ``top_eigenvalue``
measures of a run; ``hessian_trace`` takes ``estimator``), e.g. for the Hessian-trace protocol of the
over-parameterization chapter (OVER-4, chapter 4). ``benchmarks/trace_estimators.py`` measures how many
HVPs Hutch++ and XTrace need, against Hutchinson, on that chapter's model.
"""

from __future__ import annotations

import contextlib
import math
import operator
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

__all__ = [
    "EigenEstimate",
    "ESTIMATORS",
    "TraceEstimate",
    "hessian_trace",
    "hutchinson_trace",
    "hvp",
    "loss_fn",
    "scale_aware_trace",
    "top_eigenvalue",
]

_MODES = ("eval", "train")
_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    e
    for e in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
    if isinstance(e, type)
)


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: object, minimum: int, allow_none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` (or None when allowed), else a ValueError naming ``name``."""
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool)
    if ok:
        try:
            value = operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            ok = False
    if not ok or value < minimum:  # type: ignore[operator]
        allowed = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value  # type: ignore[return-value]


def _check_mode(mode: object) -> str:
    if mode not in _MODES or not isinstance(mode, str):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    return mode


def _check_data(x: object, y: object) -> int:
    """The number of data points; a ValueError naming ``x`` or ``y`` when they do not pair up."""
    if not isinstance(x, Tensor) or x.dim() == 0 or x.shape[0] < 1:
        raise ValueError(
            f"x must be a tensor with a leading batch dimension of size >= 1, got "
            f"{type(x).__name__ if not isinstance(x, Tensor) else tuple(x.shape)}"
        )
    if not isinstance(y, Tensor) or y.dim() == 0 or y.shape[0] != x.shape[0]:
        got = type(y).__name__ if not isinstance(y, Tensor) else tuple(y.shape)
        raise ValueError(f"y must be a tensor whose leading dimension equals x's ({x.shape[0]}), got {got}")
    return int(x.shape[0])


def _check_loss(loss: object) -> None:
    if not callable(loss):
        raise ValueError(f"loss must be a callable loss(output, y) -> scalar tensor, got {loss!r}")


def _resolve_params(model: nn.Module, params: Sequence[str] | None) -> list[str]:
    """The parameter names the Hessian is taken over, checked against ``model.named_parameters()``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    available = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in available.items() if p.requires_grad]
        if not names:
            raise ValueError(
                "params must name at least one parameter: the model has no parameter with "
                "requires_grad=True, so pass the names explicitly"
            )
        return names
    if isinstance(params, str) or not isinstance(params, Sequence):
        raise ValueError(f"params must be a sequence of parameter names (e.g. a list of str) or None, got {params!r}")
    names = list(params)
    if not names:
        raise ValueError("params must name at least one parameter, got an empty sequence")
    unknown = [n for n in names if not isinstance(n, str) or n not in available]
    if unknown:
        shown = list(available)[:20]
        more = f" ... ({len(available)} in all)" if len(available) > 20 else ""
        raise ValueError(
            f"params contains unknown parameter name(s) {unknown}; allowed names are those of "
            f"model.named_parameters(): {shown}{more}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"params must not repeat a name, got {names}")
    for n in names:
        if not available[n].is_floating_point():
            raise ValueError(f"params must name floating-point parameters; {n!r} has dtype {available[n].dtype}")
    return names


# --------------------------------------------------------------------------------------------------
# The loss as a function of the parameters
# --------------------------------------------------------------------------------------------------


def _fixed_state(model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    """Everything held fixed: the other parameters (detached) and the buffers (cloned, so that no
    in-place update by a module can reach the model's own buffers)."""
    chosen = set(names)
    state = {n: p.detach() for n, p in model.named_parameters() if n not in chosen}
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def _closure(
    model: nn.Module, x: Tensor, y: Tensor, loss: Callable, fixed: dict[str, Tensor]
) -> Callable[[dict[str, Tensor]], Tensor]:
    def f(params: dict[str, Tensor]) -> Tensor:
        return loss(functional_call(model, {**fixed, **params}, (x,)), y)

    return f


def loss_fn(
    model: nn.Module, x: Tensor, y: Tensor, loss: Callable = F.cross_entropy
) -> Callable[[dict[str, Tensor]], Tensor]:
    """The loss as a pure function of (some of) the parameters: ``f(params) = loss(model_params(x), y)``.

    ``f(params) = loss(torch.func.functional_call(model, {**fixed, **params}, (x,)), y)``, where ``params``
    maps parameter names to tensors and ``fixed`` holds the model's other parameters (detached) and its
    buffers (cloned when ``loss_fn`` is called). With a mean-reduced ``loss`` (the default
    ``F.cross_entropy``) this is the mean loss over the data points in ``(x, y)``. The function runs the
    model in whatever mode it is in when ``f`` is called; a train-mode BatchNorm then updates the
    *cloned* running statistics, never the model's. ``torch.func.grad(f)`` is the gradient and
    :func:`hvp` differentiates it once more.
    """
    _check_loss(loss)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return _closure(model, x, y, loss, _fixed_state(model, ()))


# --------------------------------------------------------------------------------------------------
# Measurement context: module modes and BatchNorm running statistics
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _measuring(model: nn.Module, mode: str | None) -> Iterator[None]:
    """Put ``model`` in ``mode`` ("eval", "train", or None to keep it) and restore every module's mode after.

    While inside, train-mode BatchNorm layers run with ``track_running_stats=False``: they normalize with
    the batch statistics, as in training, but do not update running statistics (an in-place update would
    also fail under ``vmap``). The flags are restored on exit.
    """
    modes = [(m, m.training) for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    # torch's forward-AD decompositions call torch.jit.script on first use, which torch 2.13 deprecates:
    # a warning about torch's internals, not about the measurement, kept out of the user's output
    caught = warnings.catch_warnings()
    caught.__enter__()
    try:
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=DeprecationWarning)
        if mode == "eval":
            model.eval()
        elif mode == "train":
            model.train()
        for m in norms:
            if m.training:
                m.track_running_stats = False
        yield
    finally:
        caught.__exit__(None, None, None)
        for m in norms:
            m.track_running_stats = True
        for m, training in modes:
            m.training = training


# --------------------------------------------------------------------------------------------------
# Batched Hessian-vector products
# --------------------------------------------------------------------------------------------------

_STRATEGIES = ("vmap", "loop", "reverse")


class _HVP:
    """``H v`` for a batch of vectors ``V`` (a dict of tensors with a leading probe dimension).

    Strategies, tried in this order on the first call and then kept:

    - ``vmap``: ``vmap(v -> jvp(grad(L), (w,), (v,))[1])`` over the probes (forward-over-reverse).
    - ``loop``: the same product one probe at a time, for models with an operation that has no ``vmap``
      batching rule (e.g. a custom ``autograd.Function`` without a ``vmap`` method).
    - ``reverse``: reverse-over-reverse, ``torch.func.vjp(grad(L), w)`` once per data chunk and its
      ``vjp_fn(v) = H^T v = H v`` per probe (as PyHessian does), for operations without forward-mode AD.

    With ``data_chunk`` the data are split into chunks of that many points and ``H v`` is the sum of the
    chunks' products weighted by ``n_chunk / N``: the Hessian of the mean loss over all ``N`` points.
    """

    def __init__(
        self, model: nn.Module, x: Tensor, y: Tensor, loss: Callable, names: Sequence[str], data_chunk: int | None
    ) -> None:
        named = dict(model.named_parameters())
        self.names = list(names)
        self.primals = {n: named[n].detach() for n in self.names}
        fixed = _fixed_state(model, self.names)
        n = x.shape[0]
        size = n if data_chunk is None else min(data_chunk, n)
        self.losses = [
            (
                _closure(model, x[i : i + size], y[i : i + size], loss, fixed),
                None if size >= n else min(size, n - i) / n,
            )
            for i in range(0, n, size)
        ]
        self.strategy: str | None = None
        self.retained: Callable | bool | None = None  # see single()

    def _fwd_rev(self, f: Callable) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
        g = grad(f)
        primals = self.primals

        def product(v: dict[str, Tensor]) -> dict[str, Tensor]:
            return jvp(g, (primals,), (v,))[1]

        return product

    def _one_chunk(self, strategy: str, f: Callable, V: dict[str, Tensor], k: int) -> dict[str, Tensor]:
        if strategy == "vmap":
            # randomness="different": a random op (train-mode dropout) draws independently per probe,
            # exactly as the loop below does; without random ops the option costs nothing.
            return vmap(self._fwd_rev(f), randomness="different")(V)
        if strategy == "loop":
            product = self._fwd_rev(f)
            outs = [product({n: t[i] for n, t in V.items()}) for i in range(k)]
        else:  # "reverse"
            _, vjp_fn = vjp(grad(f), self.primals)
            outs = [vjp_fn({n: t[i] for n, t in V.items()})[0] for i in range(k)]
        return {n: torch.stack([o[n] for o in outs]) for n in self.names}

    def _apply(self, strategy: str, V: dict[str, Tensor], k: int) -> dict[str, Tensor]:
        total: dict[str, Tensor] | None = None
        for f, weight in self.losses:
            H = self._one_chunk(strategy, f, V, k)
            if weight is not None:
                H = {n: h * weight for n, h in H.items()}
            total = H if total is None else {n: total[n] + H[n] for n in self.names}
        assert total is not None
        return total

    def single(self, v: dict[str, Tensor]) -> dict[str, Tensor]:
        """``H v`` for one vector, for iterative use (power iteration).

        With a single data chunk the reverse-over-reverse graph ``vjp(grad(L), w)`` is built on the first
        call and kept, so each later product is one reverse pass through it (as PyHessian does) instead of a
        fresh forward and backward pass; the memory held is that of one gradient computation with
        ``create_graph=True``. With several data chunks (``data_chunk``, chosen to bound memory) nothing is
        kept and each product goes through :meth:`__call__`.
        """
        if len(self.losses) == 1 and self.retained is not False:
            try:
                if self.retained is None:
                    self.retained = vjp(grad(self.losses[0][0]), self.primals)[1]
                return self.retained(v)[0]
            except _OOM_ERRORS:
                raise
            except (RuntimeError, NotImplementedError):
                self.retained = False  # no double backward for some op: use the forward-over-reverse path
        return {n: t[0] for n, t in self({n: t.unsqueeze(0) for n, t in v.items()}, 1).items()}

    def __call__(self, V: dict[str, Tensor], k: int) -> dict[str, Tensor]:
        if self.strategy is not None:
            return self._apply(self.strategy, V, k)
        failures: list[tuple[str, BaseException]] = []
        for strategy in _STRATEGIES:
            try:
                out = self._apply(strategy, V, k)
            except _OOM_ERRORS:
                raise
            except (RuntimeError, NotImplementedError) as e:
                failures.append((strategy, e))
                continue
            self.strategy = strategy
            if failures:
                reasons = "; ".join(
                    f"{s}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}" for s, e in failures
                )
                warnings.warn(
                    f"wdlib.hessian: Hessian-vector products fell back to the '{strategy}' strategy "
                    f"(slower; the result is the same) because {reasons}",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return out
        first = failures[0][1]
        if hasattr(first, "add_note"):
            for s, e in failures[1:]:
                first.add_note(f"wdlib.hessian: the '{s}' strategy failed too: {type(e).__name__}: {e}")
        raise first


def _flat_dot(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    return float(sum((a[n].double() * b[n].double()).sum() for n in a).item())


def hvp(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    v: dict[str, Tensor],
    *,
    loss: Callable = F.cross_entropy,
    params: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """The Hessian-vector product ``H v`` of the mean loss over ``(x, y)``, by forward-over-reverse AD.

    ``H v = d/dt grad_w L(w + t v) |_{t=0}``, computed as ``torch.func.jvp(torch.func.grad(L), (w,), (v,))``
    with ``L = loss_fn(model, x, y, loss)`` (Pearlmutter 1994, "Fast exact multiplication by the
    Hessian"; forward-over-reverse is the composition of the Hessian-vector-product example in the
    ``torch.func`` documentation). ``H`` is taken over the
    parameters named in ``params`` (default: every parameter with ``requires_grad``); the other parameters
    and the buffers are held fixed.

    Args:
        model: the network; its current train/eval mode is used (BatchNorm running statistics are never
            updated, see :func:`hutchinson_trace`).
        x, y: the data; ``loss(model(x), y)`` must be a scalar.
        v: a tensor per name in ``params``, each of that parameter's shape (cast to its dtype and device).
        loss: ``loss(output, y) -> scalar`` (default ``F.cross_entropy``, the mean over the batch).
        params: names from ``model.named_parameters()``.

    Returns a dict ``name -> (H v)[name]``, detached. If an operation has no forward-mode derivative the
    product falls back to reverse-over-reverse (same value) with a ``RuntimeWarning``.
    """
    _check_loss(loss)
    names = _resolve_params(model, params)
    _check_data(x, y)
    if not isinstance(v, dict) or set(v) != set(names):
        got = sorted(v) if isinstance(v, dict) else type(v).__name__
        raise ValueError(f"v must be a dict with exactly the keys of params {names}, got {got}")
    named = dict(model.named_parameters())
    V = {}
    for n in names:
        p = named[n]
        if not isinstance(v[n], Tensor) or tuple(v[n].shape) != tuple(p.shape):
            got = tuple(v[n].shape) if isinstance(v[n], Tensor) else type(v[n]).__name__
            raise ValueError(f"v[{n!r}] must be a tensor of shape {tuple(p.shape)}, got {got}")
        V[n] = v[n].detach().to(device=p.device, dtype=p.dtype).unsqueeze(0)
    with _measuring(model, None):
        out = _HVP(model, x, y, loss, names, None)(V, 1)
    return {n: out[n][0].detach() for n in names}


# --------------------------------------------------------------------------------------------------
# Trace estimators: Hutchinson, Hutch++, XTrace
# --------------------------------------------------------------------------------------------------

ESTIMATORS: tuple[str, ...] = ("hutchinson", "hutchpp", "xtrace")
_MIN_PROBES = {"hutchinson": 1, "hutchpp": 3, "xtrace": 2}


@dataclass(frozen=True, eq=False)
class TraceEstimate:
    """An estimate of ``Tr(H)`` with its standard error (see :func:`hessian_trace`).

    ``value`` is the estimate and ``stderr`` its standard error (NaN when only one sample is available);
    ``probes`` is the HVP budget asked for and ``hvps`` the Hessian-vector products actually used
    (``<= probes``); ``estimator`` is "hutchinson", "hutchpp" or "xtrace". ``samples_per_probe`` holds the
    samples the error is computed from: Hutchinson's per-probe ``v^T H v`` (``value`` is their mean), Hutch++'s
    residual samples ``g'^T H g'`` (``value`` is ``Tr(Q^T H Q)`` plus their mean), XTrace's leave-one-out
    estimates (``value`` is their mean). ``samples`` is the number of data points the loss was averaged over;
    ``per_param[name] = (trace of that tensor's diagonal block, its stderr)``, split from the same HVPs (the
    per-tensor values sum to ``value``); ``mode`` is "eval" or "train", the module mode of the measurement.
    """

    value: float
    stderr: float
    probes: int
    samples: int
    per_param: dict[str, tuple[float, float]]
    samples_per_probe: np.ndarray = field(repr=False)
    mode: str
    estimator: str = "hutchinson"
    hvps: int | None = None  # None: as many as ``probes`` (Hutchinson)

    def __post_init__(self) -> None:
        if self.hvps is None:
            object.__setattr__(self, "hvps", self.probes)


def _mean_stderr(values: np.ndarray) -> tuple[float, float]:
    n = values.shape[0]
    mean = float(values.mean())
    stderr = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return mean, stderr


def _rademacher(gen: torch.Generator, k: int, names: Sequence[str], params: dict[str, Tensor]) -> dict[str, Tensor]:
    """``k`` Rademacher probes, drawn one after the other (see the module docstring for the rule)."""
    sizes = [params[n].numel() for n in names]
    total = sum(sizes)
    out = {n: torch.empty((k, *params[n].shape), dtype=params[n].dtype) for n in names}
    for i in range(k):
        r = torch.randint(0, 2, (total,), generator=gen, dtype=torch.int8)
        for n, chunk in zip(names, torch.split(r, sizes)):
            out[n][i].copy_(chunk.view(params[n].shape))
    return {n: t.mul_(2).sub_(1).to(params[n].device) for n, t in out.items()}


class _FlatH:
    """``H`` applied to the columns of a flat float64 ``(P, k)`` matrix through the :class:`_HVP` engine.

    Rows follow the parameter tensors in the order of ``names``; each column is split into the tensors,
    cast to their dtypes and devices, and pushed through the engine ``chunk`` columns at a time. Counts the
    Hessian-vector products it makes in ``hvps``.
    """

    def __init__(self, engine: _HVP, names: Sequence[str], chunk: int | None) -> None:
        self.engine, self.names, self.chunk = engine, list(names), chunk
        first = engine.primals[self.names[0]]
        self.device = first.device
        self.sizes = [engine.primals[n].numel() for n in self.names]
        self.slices = []
        start = 0
        for s in self.sizes:
            self.slices.append(slice(start, start + s))
            start += s
        self.hvps = 0

    def flat(self, V: dict[str, Tensor]) -> Tensor:
        """A dict of ``(k, *shape)`` tensors as a ``(P, k)`` float64 matrix."""
        k = V[self.names[0]].shape[0]
        return torch.cat([V[n].detach().reshape(k, -1).to(self.device, torch.float64) for n in self.names], 1).T

    def __call__(self, M: Tensor) -> Tensor:
        k = M.shape[1]
        out = torch.empty_like(M)
        step = k if self.chunk is None else min(self.chunk, k)
        primals = self.engine.primals
        for start in range(0, k, step):
            c = min(step, k - start)
            block = M[:, start : start + c].T
            V = {
                n: block[:, sl].reshape(c, *primals[n].shape).to(device=primals[n].device, dtype=primals[n].dtype)
                for n, sl in zip(self.names, self.slices)
            }
            out[:, start : start + c] = self.flat(self.engine(V, c))
            self.hvps += c
            del V
        return out

    def blocks(self, A: Tensor, B: Tensor) -> Tensor:
        """Per tensor ``p`` and column ``j``: ``A[p rows, j] . B[p rows, j]``, shape ``(tensors, k)``."""
        return torch.stack([(A[sl] * B[sl]).sum(0) for sl in self.slices])


def _orth(M: Tensor) -> Tensor:
    """An orthonormal basis of the columns of ``M`` (Householder QR, reduced: ``min(P, k)`` columns)."""
    return torch.linalg.qr(M, mode="reduced")[0]


def _hutchpp(H: _FlatH, gen: torch.Generator, probes: int, names: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021, arXiv 2010.09649, Algorithm 1), split per tensor.

    Returns ``(sketch, residual, residual_total)``: ``sketch[p] = Tr(Q_p^T (H Q)_p)`` (exact given ``Q``),
    ``residual[p, i] = g'_{i,p}^T (H g'_i)_p`` and ``residual_total[i] = g'_i^T H g'_i``.
    """
    primals = H.engine.primals
    P = sum(H.sizes)
    k = probes // 3
    S = H.flat(_rademacher(gen, k, names, primals))
    Q = _orth(H(S))  # P x q, q = min(k, P)
    q = Q.shape[1]
    r = probes - k - q
    G = H.flat(_rademacher(gen, r, names, primals))
    sketch = H.blocks(Q, H(Q)).sum(1)
    G = G - Q @ (Q.T @ G)  # (I - Q Q^T) G
    residual = H.blocks(G, H(G))
    assert H.hvps == k + q + r <= probes and q <= P
    return sketch, residual, residual.sum(0)


def _leave_one_out_directions(R: Tensor, chunk: int = 32) -> Tensor:
    """Columns ``s_i``: unit vectors orthogonal to every column of the ``n x n`` upper-triangular ``R`` but the
    ``i``-th, so that ``Q (I - s_i s_i^T) Q^T`` projects onto the span of ``Q R`` without its ``i``-th column.

    For an ``R`` of full numerical rank (every pivot above ``n eps max|R_jj|``), ``s_i`` is the normalised
    ``i``-th column of ``R^{-T}`` (Epperly, Tropp, Webber 2024): back-substitution is backward stable, so it
    is orthogonal to the other columns to rounding even when ``R`` is ill-conditioned. Otherwise (``H Omega``
    of lower rank than ``n``, e.g. a low-rank ``H``) ``R^{-T}`` does not exist, and ``s_i`` is the last column
    of the complete QR factor of ``R`` without its ``i``-th column (orthogonal to that column space by
    construction; if it has lower rank than ``n - 1``, one deterministic vector of its complement).
    """
    n = R.shape[0]
    eye = torch.eye(n, dtype=R.dtype, device=R.device)
    if n == 1:
        return eye
    d = torch.diagonal(R).abs()
    top = float(d.max())
    if top > 0 and float(d.min()) > n * torch.finfo(R.dtype).eps * top:
        X = torch.linalg.solve_triangular(R, eye, upper=True).T  # R^{-T}
        norms = X.norm(dim=0, keepdim=True)
        if bool(torch.isfinite(X).all()) and bool((norms > 0).all()):
            return X / norms
    out = torch.empty_like(R)
    for start in range(0, n, chunk):
        idx = range(start, min(start + chunk, n))
        others = torch.stack([torch.cat([R[:, :i], R[:, i + 1 :]], dim=1) for i in idx])  # (c, n, n - 1)
        out[:, start : start + len(idx)] = torch.linalg.qr(others, mode="complete")[0][:, :, -1].T
    return out


def _xtrace(H: _FlatH, gen: torch.Generator, probes: int, names: Sequence[str]) -> Tensor:
    """XTrace (Epperly, Tropp, Webber 2024, arXiv 2301.07825): the ``n`` leave-one-out estimates, per tensor.

    Returns ``(tensors, n)``: entry ``[p, i]`` is tensor ``p``'s share of ``Tr(Q_i^T H Q_i) + w_i^T (I - P_i)
    H (I - P_i) w_i``, namely ``Tr((I - s_i s_i^T) Q_p^T (HQ)_p) + u_{i,p}^T (H u_i)_p`` with
    ``u_i = (I - P_i) w_i`` (the formulas are in :func:`hessian_trace`).
    """
    P = sum(H.sizes)
    n = min(probes // 2, P)
    Omega = H.flat(_rademacher(gen, n, names, H.engine.primals))  # P x n
    Y = H(Omega)
    Q, R = torch.linalg.qr(Y, mode="reduced")  # n <= P: Q is P x n, R is n x n
    Z = H(Q)
    S = _leave_one_out_directions(R)
    W = Q.T @ Omega  # column i: Q^T w_i
    alpha = (S * W).sum(0)  # s_i^T Q^T w_i
    coef = W - S * alpha  # (I - s_i s_i^T) Q^T w_i, column by column
    U = Omega - Q @ coef  # u_i = (I - P_i) w_i
    HU = Y - Z @ coef  # H u_i = H w_i - H Q (I - s_i s_i^T) Q^T w_i
    resid = H.blocks(U, HU)  # (tensors, n)
    # Tr(P_i H) per tensor: Tr((I - s_i s_i^T) B_p) with B_p = Q_p^T Z_p
    proj = torch.stack([torch.trace(B) - (S * (B @ S)).sum(0) for B in (Q[sl].T @ Z[sl] for sl in H.slices)])
    assert H.hvps == 2 * n <= probes
    return proj + resid


def hessian_trace(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    probes: int = 100,
    seed: int = 0,
    loss: Callable = F.cross_entropy,
    params: Sequence[str] | None = None,
    probe_chunk: int | None = None,
    data_chunk: int | None = None,
    mode: str = "eval",
    estimator: str = "hutchinson",
) -> TraceEstimate:
    """An estimate of ``Tr(H)``, the Hessian trace of the mean loss over ``(x, y)``, with its error.

    ``probes`` is the budget of Hessian-vector products (HVPs); ``estimator`` picks how they are spent.
    ``hutchinson_trace`` is the same function (its older name; the default estimator is Hutchinson's).

    - ``"hutchinson"`` (Hutchinson 1990; default): ``Tr(H) = E[v^T H v]`` for Rademacher ``v``. With
      ``n = probes`` probes the estimate is ``mean_i v_i^T H v_i`` and ``stderr = std_i(v_i^T H v_i, ddof=1) /
      sqrt(n)``; the per-tensor values ``v_{i,p}^T (H v_i)_p`` estimate the diagonal-block traces
      ``Tr(H_pp)`` and sum to ``v_i^T H v_i``. At least 1 probe; uses exactly ``probes`` HVPs.
    - ``"hutchpp"``, Hutch++ (Meyer, Musco, Musco, Woodruff 2021, arXiv 2010.09649, Algorithm 1): ``k =
      probes // 3`` Rademacher sketch vectors ``S``, ``Q = orth(H S)`` (``q = min(k, P)`` columns, ``k``
      HVPs), ``H Q`` (``q`` HVPs), and ``r = probes - k - q`` residual Rademacher probes ``G`` (the remainder
      of the division by 3 goes to them), projected ``g' = (I - Q Q^T) g`` and multiplied by ``H`` (``r``
      HVPs): ``Tr(H) ~ Tr(Q^T H Q) + mean_i g'_i^T H g'_i``, using exactly ``probes`` HVPs (at least 3).
      ``stderr = std_i(g'_i^T H g'_i, ddof=1) / sqrt(r)``, the error of the residual Hutchinson part
      *conditional on the sketch* ``Q`` (``Tr(Q^T H Q)`` is computed exactly given ``Q``; the variation of
      ``Q`` from draw to draw is not in it). ``samples_per_probe`` holds the ``r`` residual samples, whose
      mean is *not* the estimate. Per tensor: ``Tr(H_pp) = Tr(Q_p^T (HQ)_p) + Tr(D_p H (I - Q Q^T))``
      (``D_p`` the coordinate projector onto tensor ``p``, ``Q_p`` its rows), and the second term is
      ``E[g'_p^T (H g')_p]`` (``Tr(Π D_p H Π) = Tr(D_p H Π)`` for the projector ``Π = I - Q Q^T``), so each
      block gets its exact sketch part plus the mean of its residual samples, with their standard error;
      the blocks sum to the total.
    - ``"xtrace"``, XTrace (Epperly, Tropp, Webber 2024, arXiv 2301.07825, the exchangeable estimator built
      from Hutch++'s ingredients with every probe used both ways): ``n = min(probes // 2, P)`` Rademacher
      probes ``Omega = [w_1..w_n]``, ``Y = H Omega`` (``n`` HVPs), ``Q R = Y`` (reduced QR), ``Z = H Q``
      (``n`` HVPs); ``2 n`` HVPs in all (one probe is left unused when ``probes`` is odd; at least 2). For
      each ``i``, ``P_i`` projects onto the span of ``Y`` without its ``i``-th column: ``P_i = Q (I - s_i
      s_i^T) Q^T`` with ``s_i`` the normalised ``i``-th column of ``R^{-T}``; the leave-one-out estimate is
      ``t_i = Tr(Q_i^T H Q_i) + w_i^T (I - P_i) H (I - P_i) w_i`` with ``Tr(Q_i^T H Q_i) = Tr(B) - s_i^T B s_i``
      (``B = Q^T Z``), ``u_i = (I - P_i) w_i = w_i - Q c_i``, ``H u_i = y_i - Z c_i``, ``c_i = (I - s_i
      s_i^T) Q^T w_i``: only ``n x n`` matrices and ``P x n`` products, no further HVPs. The estimate is
      ``mean_i t_i``; ``stderr = std_i(t_i, ddof=1) / sqrt(n)``, the paper's error estimate, a heuristic:
      the ``t_i`` are exchangeable, not independent (each uses all probes). ``samples_per_probe`` holds
      the ``t_i``. Per tensor: ``t_{i,p} = Tr((I - s_i s_i^T) Q_p^T Z_p) + u_{i,p}^T (H u_i)_p``, whose
      expectation is ``Tr(H_pp)`` by the same argument as for Hutch++; they sum to ``t_i``. (The paper's
      "improved" rescaling for vectors on the sphere is not used: with Rademacher ``w_i``, ``E[w w^T] = I``
      makes every ``t_i`` unbiased as it stands.)

    Hutch++ and XTrace are exact (up to rounding) when ``rank(H)`` is at most the sketch size (``k`` for
    Hutch++, ``n - 1`` for XTrace, for probes in general position); their error falls faster than
    Hutchinson's ``1/sqrt(probes)`` when the eigenvalues of ``H`` decay fast, and is worse for a flat or
    slowly decaying spectrum (Hutch++ spends only a third of its budget on the remainder;
    ``benchmarks/trace_estimators.py`` measures both cases). Their linear algebra runs in float64 on flat
    ``P x k`` matrices (``P`` parameters, ``k <= probes``) on the parameters' device: up to about ``3 P
    probes x 8`` bytes beyond the HVPs themselves. ``hvps`` in the result is the number of HVPs used.

    Andriushchenko et al. (arXiv 2310.04415) report this trace, measured with PyHessian's Hutchinson
    estimator (Yao et al. 2020, arXiv 1912.07145) on a fixed training subset in eval mode; PyHessian's probe
    count is set by an early stop (running mean moving by < 1e-3 relative), ours is fixed and comes with a
    standard error. ``H v`` is the forward-over-reverse product of :func:`hvp`.

    Args:
        model: the network. During the measurement it is put in ``mode`` (``model.eval()`` or
            ``model.train()``); every module's mode is restored afterwards. In train mode BatchNorm uses
            batch statistics but its running statistics are not updated; dropout draws a fresh mask per
            probe (the estimate is then of the mask-averaged trace).
        x, y: the data, ``N = x.shape[0]`` points; ``loss(model(x), y)`` must be a scalar.
        probes: the HVP budget: >= 1 for "hutchinson", >= 3 for "hutchpp", >= 2 for "xtrace" (``stderr``
            is NaN when it rests on one sample).
        seed: seeds the CPU ``torch.Generator`` the probes are drawn from; the probes are the same on every
            device and for any ``probe_chunk``/``data_chunk`` (rule in the module docstring). Hutch++ draws
            its sketch vectors first, then its residual probes; XTrace's probes are Hutchinson's first ``n``.
        loss: ``loss(output, y) -> scalar``, default ``F.cross_entropy`` (mean over the batch).
        params: names of the parameters ``H`` is taken over (default: those with ``requires_grad``).
        probe_chunk: probes per ``vmap`` call (None: all at once). Memory grows with ``probe_chunk x
            data_chunk``: each batched probe carries its own tangent of every activation and of its
            gradient, about 3-4 times the activations of one forward pass per probe and data point, plus
            ``probe_chunk`` copies of the parameters. Measured: the MNIST-1D ``CNN(channels=(16, 16),
            dim=1)`` on 1,000 points with 20 probes peaks at about 740 MB all at once, 330 MB with
            ``probe_chunk=4``, 200 MB with ``data_chunk=100`` (a PyHessian-style loop: about 110 MB). For
            large models or many points set ``probe_chunk`` and/or ``data_chunk``. On CPU, all probes with
            a ``data_chunk`` of 100-250 points was the fastest setting in ``benchmarks/hessian_trace.py``.
        data_chunk: split ``(x, y)`` into chunks of this many points and sum the chunks' ``H v`` weighted
            by ``n_chunk / N`` (None: one chunk). For a mean-reduced loss whose per-sample terms do not
            interact this is exactly the full-batch Hessian (train-mode BatchNorm, whose batch statistics
            couple the samples, is the exception).
        mode: "eval" (default, as PyHessian and the paper) or "train".
        estimator: "hutchinson" (default), "hutchpp" or "xtrace", as above.

    The probe products are batched with ``torch.func.vmap``. If the model has an operation ``vmap`` cannot
    batch, the probes run in a Python loop instead, and if it has no forward-mode derivative the products
    are computed reverse-over-reverse; both give the same values and emit a ``RuntimeWarning``.
    The returned numbers are computed in float64.
    """
    if not isinstance(estimator, str) or estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    probes = _check_int("probes", probes, _MIN_PROBES[estimator])
    seed = _check_int("seed", seed, 0)
    probe_chunk = _check_int("probe_chunk", probe_chunk, 1, allow_none=True)
    data_chunk = _check_int("data_chunk", data_chunk, 1, allow_none=True)
    mode = _check_mode(mode)
    _check_loss(loss)
    names = _resolve_params(model, params)
    n_samples = _check_data(x, y)
    if seed >= 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")

    gen = torch.Generator().manual_seed(seed)
    if estimator != "hutchinson":
        with _measuring(model, mode):
            H = _FlatH(_HVP(model, x, y, loss, names, data_chunk), names, probe_chunk)
            if estimator == "hutchpp":
                sketch, residual, values = _hutchpp(H, gen, probes, names)
                per_np = residual.cpu().numpy()
                base = sketch.cpu().numpy()
            else:
                per_t = _xtrace(H, gen, probes, names)
                values = per_t.sum(0)
                per_np = per_t.cpu().numpy()
                base = np.zeros(len(names))
        values = values.cpu().numpy()
        values.setflags(write=False)
        resid_mean, stderr = _mean_stderr(values)
        per_param = {}
        for j, n in enumerate(names):
            m_p, se_p = _mean_stderr(per_np[j])
            per_param[n] = (float(base[j]) + m_p, se_p)
        return TraceEstimate(
            value=float(base.sum()) + resid_mean,
            stderr=stderr,
            probes=probes,
            samples=n_samples,
            per_param=per_param,
            samples_per_probe=values,
            mode=mode,
            estimator=estimator,
            hvps=H.hvps,
        )

    chunk = probes if probe_chunk is None else min(probe_chunk, probes)
    per = {n: np.empty(probes, dtype=np.float64) for n in names}
    with _measuring(model, mode):
        engine = _HVP(model, x, y, loss, names, data_chunk)
        for start in range(0, probes, chunk):
            k = min(chunk, probes - start)
            V = _rademacher(gen, k, names, engine.primals)
            Hv = engine(V, k)
            for n in names:
                dots = (Hv[n].detach().double() * V[n].double()).reshape(k, -1).sum(dim=1)
                per[n][start : start + k] = dots.cpu().numpy()
            del V, Hv
    values = np.sum([per[n] for n in names], axis=0)
    values.setflags(write=False)
    value, stderr = _mean_stderr(values)
    return TraceEstimate(
        value=value,
        stderr=stderr,
        probes=probes,
        samples=n_samples,
        per_param={n: _mean_stderr(per[n]) for n in names},
        samples_per_probe=values,
        mode=mode,
        estimator="hutchinson",
        hvps=probes,
    )


#: The older name of :func:`hessian_trace` (the same function; its default estimator is Hutchinson's).
hutchinson_trace = hessian_trace


# --------------------------------------------------------------------------------------------------
# Top eigenvalue
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EigenEstimate:
    """The result of :func:`top_eigenvalue`: the Rayleigh quotient ``value = v^T H v`` of the final unit
    vector ``vector`` (a dict of tensors like the parameters), the number of Hessian-vector products
    ``iterations``, the residual ``||H v - value v||`` (some eigenvalue of ``H`` lies within it of
    ``value``) and the module ``mode`` of the measurement."""

    value: float
    iterations: int
    residual: float
    vector: dict[str, Tensor] = field(repr=False)
    mode: str


def top_eigenvalue(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    loss: Callable = F.cross_entropy,
    params: Sequence[str] | None = None,
    data_chunk: int | None = None,
    mode: str = "eval",
) -> EigenEstimate:
    """The eigenvalue of largest *magnitude* of ``H`` (the Hessian of the mean loss over ``(x, y)``), by power
    iteration.

    Power iteration ``v_{t+1} = H v_t / ||H v_t||`` from a Gaussian start (CPU generator seeded by
    ``seed``), with ``lambda_t = v_t^T H v_t``; it stops when ``|lambda_t - lambda_{t-1}| <= tol *
    max(|lambda_t|, |lambda_{t-1}|)`` or after ``iters`` products. As PyHessian's ``eigenvalues()`` (Yao et al.
    2020, arXiv 1912.07145; tolerance 1e-3 there) this converges to the eigenvalue of largest absolute
    value, which is the top (most positive) eigenvalue only when no negative eigenvalue is larger in
    magnitude; a large negative ``value`` means the negative end dominates. Convergence is geometric in
    ``|lambda_2 / lambda_1|``, so a small relative change does not guarantee accuracy when the top two
    eigenvalues are close; the reported ``residual = ||H v - lambda v||`` bounds the distance from
    ``value`` to the nearest eigenvalue of ``H`` (``H`` is symmetric).

    The products are the ``H v`` of :func:`hvp`, one vector at a time. With ``data_chunk=None`` they are
    taken reverse-over-reverse through a gradient graph built once and kept for all iterations
    (PyHessian's way; on the benchmark's CNN about 40% less time per product than redoing the
    forward-over-reverse pass, for the memory of one ``create_graph=True`` gradient); with ``data_chunk`` each
    product is forward-over-reverse
    chunk by chunk and nothing is kept, so memory stays bounded.

    Arguments ``loss``, ``params``, ``data_chunk`` and ``mode`` are as in :func:`hutchinson_trace` (the
    model's modes are restored afterwards); ``iters`` >= 1, ``tol`` >= 0.
    """
    iters = _check_int("iters", iters, 1)
    seed = _check_int("seed", seed, 0)
    data_chunk = _check_int("data_chunk", data_chunk, 1, allow_none=True)
    mode = _check_mode(mode)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0 or math.isinf(tol):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    _check_loss(loss)
    names = _resolve_params(model, params)
    _check_data(x, y)
    if seed >= 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")

    with _measuring(model, mode):
        engine = _HVP(model, x, y, loss, names, data_chunk)
        primals = engine.primals
        gen = torch.Generator().manual_seed(seed)
        sizes = [primals[n].numel() for n in names]
        flat = torch.randn(sum(sizes), generator=gen, dtype=torch.float64)
        v = {
            n: c.view(primals[n].shape).to(device=primals[n].device, dtype=primals[n].dtype)
            for n, c in zip(names, torch.split(flat, sizes))
        }
        norm = math.sqrt(_flat_dot(v, v))
        v = {n: t / norm for n, t in v.items()}
        prev: float | None = None
        value, residual, it = 0.0, 0.0, 0
        for it in range(1, iters + 1):
            w = engine.single(v)
            value = _flat_dot(v, w)
            r = {n: w[n].double() - value * v[n].double() for n in names}
            residual = math.sqrt(_flat_dot(r, r))
            done = prev is not None and abs(value - prev) <= tol * max(abs(value), abs(prev))
            norm_w = math.sqrt(_flat_dot(w, w))
            if done or it == iters or norm_w == 0.0:
                break
            v = {n: t / norm_w for n, t in w.items()}
            prev = value
    return EigenEstimate(
        value=value, iterations=it, residual=residual, vector={n: t.detach() for n, t in v.items()}, mode=mode
    )


# --------------------------------------------------------------------------------------------------
# Scale-aware trace
# --------------------------------------------------------------------------------------------------


def scale_aware_trace(estimate: TraceEstimate, model: nn.Module) -> float:
    """``sum_p Tr(H_pp) * ||w_p||^2`` over the parameter tensors ``p`` of ``estimate.per_param``.

    Why: the raw trace is not a property of the function a network computes. If a layer's loss is
    unchanged when its weights are multiplied by ``a > 0`` (a layer followed by normalization), or when
    layer ``l`` is multiplied by ``a`` and layer ``l+1`` by ``1/a`` (a ReLU network, which is positively
    homogeneous), then at the rescaled point ``H_pp`` is divided by ``a^2`` for a tensor scaled by ``a``
    (differentiate ``L(w) = L'(a w)`` twice) while ``||w_p||^2`` is multiplied by ``a^2``: each term
    ``Tr(H_pp) ||w_p||^2`` is unchanged, while ``Tr(H)`` can be made as large or small as one likes
    (Dinh et al. 2017, "Sharp minima can generalize for deep nets"). This is a tensor-wise form of the
    scale-normalized sharpness measures (normalized flat minima of Tsuzuku et al. 2020; ASAM's adaptive
    sharpness, Kwon et al. 2021, whose elementwise analogue is ``sum_i w_i^2 H_ii``). It matters for weight
    decay, which changes the weight norm: a smaller trace after decay can be a rescaling rather than a
    flatter function.

    ``Tr(H_pp)`` is the per-tensor Hutchinson estimate and ``w_p`` the model's current parameter (so
    measure and call on the same weights). Only the expectation is invariant: the per-probe values include
    off-diagonal terms that do scale.
    """
    if not isinstance(estimate, TraceEstimate):
        raise ValueError(f"estimate must be a TraceEstimate, got {type(estimate).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = dict(model.named_parameters())
    missing = [n for n in estimate.per_param if n not in named]
    if missing:
        raise ValueError(f"model must have the parameters of estimate.per_param; missing {missing}")
    total = 0.0
    for n, (trace, _) in estimate.per_param.items():
        total += trace * float(named[n].detach().double().pow(2).sum().item())
    return total
