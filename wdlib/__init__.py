"""wdlib: optimizers, schedules, timescales and diagnostics for *Weight Decay, Reproduced*.

    import wdlib
    opt = wdlib.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)   # = torch.optim.AdamW
    opt = wdlib.Adam(model.parameters(), lr=1e-3, weight_decay=0.1)    # = torch.optim.Adam (coupled L2)
"""

__version__ = "0.1.0"

from . import claims, optim, schedules, timescale  # noqa: E402,F401
from .optim import SGD, SGDW, Adam, AdamW, convert_weight_decay  # noqa: E402,F401
from .timescale import tau_epoch, tau_iter, transfer_weight_decay, weight_decay_for  # noqa: E402,F401
