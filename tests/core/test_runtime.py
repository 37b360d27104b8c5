"""wdlib.runtime: the device a run asks for."""

from __future__ import annotations

import pytest
import torch

from wdlib.runtime import resolve_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_cuda_asked_for_without_cuda_is_refused():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
