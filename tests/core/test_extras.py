"""An optional package that is missing is named with the extra that installs it (wdlib._extras.require)."""

from __future__ import annotations

import sys
from unittest import mock

import pytest

from wdlib._extras import require


def test_a_present_package_is_imported():
    assert require("json").dumps([1]) == "[1]"


def test_a_missing_package_names_its_extra():
    with pytest.raises(
        ModuleNotFoundError,
        match=r"the MNIST-1D dataset needs the package 'nope_pkg' .*"
        r"pip install 'wdlib\[engine\]'",
    ):
        require("nope_pkg.data", purpose="the MNIST-1D dataset")


def test_a_missing_dependency_of_a_present_package_keeps_its_own_error():
    err = ModuleNotFoundError("No module named 'deep_dep'", name="deep_dep")
    with mock.patch("importlib.import_module", side_effect=err), pytest.raises(ModuleNotFoundError) as info:
        require("yaml", "engine")
    assert info.value is err


def test_the_engine_data_say_which_extra_they_need(monkeypatch):
    import wdlib.data as data

    data._mnist1d_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "mnist1d", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'wdlib\[engine\]'"):
        data.mnist1d(100, seed=12345)
    data._mnist1d_arrays.cache_clear()
