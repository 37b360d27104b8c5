#!/bin/sh
# Download the wheels that `python -m wdlib.check` (make gpu-check) needs on the GPU machine beyond what it has
# preinstalled (torch, numpy, scipy, matplotlib, pandas, scikit-learn, pyyaml, tqdm), into the git-ignored
# .whl/ (WHEEL_DIR overrides), on a machine with a network. All are pure Python (py3-none-any), so they install
# on whatever Python the GPU machine has:
#
#   mnist1d                      the MNIST-1D generator behind wdlib.data (pyproject's `engine` extra; the other
#                                packages of that extra are preinstalled there)
#   requests, urllib3, idna,     mnist1d imports requests when it is imported (its download path is never
#   certifi, charset-normalizer  called); requests' own dependencies
#   setuptools>=77               pyproject's build backend, for `pip install -e .` without an index
#
# The `book` extra's jupyter-book, papermill, ipykernel, nbformat and ipywidgets build the book and are imported
# by no module the check loads (wdlib.plotting's matplotlib is preinstalled), so they are not fetched.
#
# On the GPU machine, with .whl carried along with the working tree (it is git-ignored: name it in the device
# tool's `carry`):
#
#   pip install --no-index --no-deps .whl/*.whl
#   pip install --no-index --find-links .whl --no-deps -e .   # optional: the check also runs uninstalled
#   python -m wdlib.check --device cuda --size full            # = make gpu-check
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${WHEEL_DIR:-.whl}
mkdir -p "$DEST"
"$PYTHON" -m pip download --no-deps --only-binary=:all: --platform any --implementation py --python-version 3.10 \
    -d "$DEST" "mnist1d>=0.0.2" requests urllib3 idna certifi charset-normalizer "setuptools>=77"
ls -l "$DEST"
