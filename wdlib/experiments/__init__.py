"""Experiments of the chapters, one module per chapter, on one scaffold (:mod:`wdlib.experiments._scaffold`):
:func:`check_parameters` checks a notebook's parameters; each chapter's ``setup(scale)`` gives its settings."""

from ._scaffold import SCALES, Setting, check_parameters, pick_settings

__all__ = ["SCALES", "Setting", "check_parameters", "pick_settings"]
