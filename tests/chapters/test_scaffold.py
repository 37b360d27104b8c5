"""The chapters' scaffold (wdlib.experiments): one vocabulary of scales, one settings base, one way to pick them."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from wdlib import config, runtime
from wdlib.experiments import SCALES, Setting, check_parameters, pick_settings

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = ("decoupling", "ema_view", "scaling", "overparam", "practice", "llm", "beyond")


def test_one_vocabulary_of_scales():
    spec = importlib.util.spec_from_file_location("build_book_scales", ROOT / "tools" / "build_book.py")
    build_book = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_book)
    assert SCALES is config.SCALES == ("smoke", "full", "test")
    assert build_book.SCALES is config.SCALES
    assert not hasattr(runtime, "SCALES") and not hasattr(runtime, "check_parameters")


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_chapter_has_settings_for_every_scale(name):
    mod = importlib.import_module(f"wdlib.experiments.{name}")
    assert set(mod.SETTINGS) == set(SCALES)
    for scale in SCALES:
        s = mod.setup(scale)
        assert isinstance(s, mod.Setup) and isinstance(s, Setting)
        assert s.scale == scale and s.device == torch.device("cpu") and s.seed == 0
        assert s == mod.SETTINGS[scale]  # picking fills in nothing else
    with pytest.raises(ValueError, match="scale must be one of 'smoke', 'full', 'test', got 'medium'"):
        mod.setup("medium")


@pytest.mark.parametrize("name", CHAPTERS)
def test_no_settings_field_carries_a_claim_number(name):
    mod = importlib.import_module(f"wdlib.experiments.{name}")
    fields = [f.name for f in dataclasses.fields(mod.Setup)]
    numbered = [f for f in fields if len(f) > 2 and f[0] in "os" and f[1].isdigit() and f[2] == "_"]
    assert not numbered, numbered


def test_pick_settings_fills_device_and_seed_and_names_the_scales():
    @dataclasses.dataclass(frozen=True)
    class Tiny(Setting):
        width: int
        steps: int = 10

    table = {"smoke": Tiny("smoke", width=4), "full": Tiny("full", width=8)}
    s = pick_settings(table, "full", device="cpu", seed=3)
    assert (s.scale, s.width, s.steps, s.seed, s.device) == ("full", 8, 10, 3, torch.device("cpu"))
    assert s.seeds(3) == (3000, 3001, 3002) and table["full"].seed == 0  # the table is left as it was
    with pytest.raises(ValueError, match="no settings for scale 'test'; it has 'smoke', 'full'"):
        pick_settings(table, "test")
    with pytest.raises(ValueError, match="scale must be one of"):
        pick_settings(table, "huge")
    with pytest.raises(ValueError, match="seed"):
        pick_settings(table, "smoke", seed=-1)
    with pytest.raises(ValueError, match="filed under scale 'full'"):
        pick_settings({"full": Tiny("smoke", width=1)}, "full")


def test_check_parameters_accepts_every_scale_and_checks_device_and_seed():
    for scale in SCALES:
        s = check_parameters(scale, "cpu", 2)
        assert type(s) is Setting and (s.scale, s.seed, s.smoke) == (scale, 2, scale == "smoke")
    with pytest.raises(ValueError, match="device"):
        check_parameters("smoke", "tpu")
    with pytest.raises(ValueError, match="seed"):
        check_parameters("smoke", "cpu", True)
    with pytest.raises(ValueError, match="n must be"):
        check_parameters("smoke", "cpu", 0).seeds(True)


# --- check_parameters (moved from the runtime tests) ------------------------------------------------------
def test_unknown_scale_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="scale must be one of 'smoke', 'full'"):
        check_parameters("medium")


@pytest.mark.parametrize(
    "kwargs,name", [(dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(device="tpu"), "device")]
)
def test_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        check_parameters("smoke", **kwargs)


def test_check_parameters_seeds_every_generator():
    s = check_parameters("smoke", "cpu", 7)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    check_parameters("smoke", "cpu", 7)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert s.smoke and s.seed == 7 and s.device == torch.device("cpu")


def test_run_seeds_follow_the_base_seed_and_do_not_overlap():
    assert check_parameters("smoke", "cpu", 0).seeds(3) == (0, 1, 2)
    one = check_parameters("smoke", "cpu", 1).seeds(5)
    assert one == (1000, 1001, 1002, 1003, 1004) and not set(one) & set(range(5))
    with pytest.raises(ValueError, match="n must be"):
        check_parameters("smoke", "cpu", 0).seeds(0)
