"""wdlib: optimizers, schedules, timescales and diagnostics for *Weight Decay, Reproduced*. ::

    import wdlib
    opt = wdlib.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)   # = torch.optim.AdamW
    opt = wdlib.Adam(model.parameters(), lr=1e-3, weight_decay=0.1)    # = torch.optim.Adam (coupled L2)

The optimizers are documented in :mod:`wdlib.optim`, the timescales in :mod:`wdlib.timescale`.
"""

from . import optim, schedules, timescale
from ._version import __version__
from .optim import SGD, SGDW, Adam, AdamW, Muon, convert_weight_decay
from .timescale import tau_epoch, tau_iter, transfer_weight_decay, weight_decay_for

__all__ = [
    "__version__",
    "optim",
    "schedules",
    "timescale",
    "SGD",
    "SGDW",
    "Adam",
    "AdamW",
    "Muon",
    "convert_weight_decay",
    "tau_epoch",
    "tau_iter",
    "transfer_weight_decay",
    "weight_decay_for",
]
