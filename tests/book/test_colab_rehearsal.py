"""The readers' paths, rehearsed offline in a fresh virtual environment (``make rehearsal``, part of ``make test``).

1. ``pip install wdlib`` from a wheel built here, installed outside the repository into a venv that has only
   torch (and ipykernel), as Colab has them: the core imports and trains, the engine says which extra it needs.
2. Colab: the venv gets a stand-in ``google.colab`` module (imported at start-up, as on Colab), chapter 1 runs
   in it (papermill, a kernel of that venv) with its install cell pointed at the wheel instead of the
   repository's release tag -- the cell's only change -- and executes at the ``test`` scale.

Everything installs from ``$WDLIB_WHEELHOUSE`` (``make rehearsal`` fills it from the package registry first) with
``--no-index``: the rehearsal never reaches the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from site_config import load_site, with_install_cell  # noqa: E402

pytestmark = pytest.mark.rehearsal
CHAPTER = "notebooks/01_l2_vs_decoupled.ipynb"


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    path = os.environ.get("WDLIB_WHEELHOUSE")
    if not path or not Path(path, ".complete").exists():
        pytest.fail("no wheelhouse: run `make rehearsal` (it downloads the wheels once, then installs offline)")
    return Path(path)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 900) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would let the checkout or this venv leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_", "WDLIB_"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory, wheelhouse) -> dict[str, Path]:
    """A fresh venv (outside the repository) with torch and ipykernel only, and a wheel of wdlib built here."""
    tmp = tmp_path_factory.mktemp("colab")
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(tmp / "venv")], tmp)
    py = tmp / "venv" / "bin" / "python"
    offline = ["--no-index", "--find-links", str(wheelhouse), "--disable-pip-version-check", "-q"]
    torch_pin = (wheelhouse.parent / "torch-pin.txt").read_text().strip()  # the torch of this project's venv
    _run([str(py), "-m", "pip", "install", *offline, torch_pin, "ipykernel"], tmp, _clean_env())
    torch_version = _run([str(py), "-c", "import torch; print(torch.__version__)"], tmp, _clean_env()).strip()
    wheel_cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp / "dist"),
    ]
    _run([*wheel_cmd, str(ROOT)], tmp)
    (wheel,) = (tmp / "dist").glob("wdlib-*.whl")
    return {"tmp": tmp, "py": py, "wheel": wheel, "wheelhouse": wheelhouse, "torch": torch_version, "offline": offline}


def test_the_core_installs_from_a_wheel_outside_the_repository(venv):
    tmp, py = venv["tmp"], venv["py"]
    _run([str(py), "-m", "pip", "install", *venv["offline"], str(venv["wheel"])], tmp, _clean_env())
    probe = """
import importlib.util, json, torch, wdlib
from wdlib.optim import AdamW
w = torch.nn.Parameter(torch.ones(3))
opt = AdamW([w], lr=0.1, weight_decay=0.5)
w.grad = torch.zeros(3)
opt.step()
import wdlib.data
try:
    wdlib.data.mnist1d(100)
    engine = "ran"
except ModuleNotFoundError as exc:
    engine = str(exc)
print(json.dumps({"file": wdlib.__file__, "version": wdlib.__version__, "w": w.tolist(), "engine": engine,
                  "book": [m for m in ("matplotlib", "yaml", "tqdm", "papermill") if importlib.util.find_spec(m)]}))
"""
    out = json.loads(_run([str(py), "-c", probe], tmp, _clean_env()).strip().splitlines()[-1])
    assert str(tmp / "venv") in out["file"], f"wdlib came from {out['file']}, not the fresh venv"
    site = load_site(ROOT)
    assert out["version"] == site.version
    # AdamW with a zero gradient: only the decay acts, w <- (1 - lr*wd) w (torch's convention)
    assert out["w"] == pytest.approx([1 - 0.1 * 0.5] * 3)
    assert out["book"] == [], f"the core pulled in the extras' packages: {out['book']}"
    # the engine's data need its extra, and the error says which
    assert "pip install 'wdlib[engine]'" in out["engine"] and "mnist1d" in out["engine"], out["engine"]


def test_the_colab_install_cell_installs_wdlib_and_chapter_1_runs(venv):
    tmp, py = venv["tmp"], venv["py"]
    site_packages = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp).strip())
    stub = site_packages / "google" / "colab"
    stub.mkdir(parents=True, exist_ok=True)  # a namespace package `google` with a module `google.colab`
    (stub / "__init__.py").write_text('"""A stand-in for Colab\'s module: the install cell tests its presence."""\n')
    (site_packages / "colab_rehearsal.pth").write_text("import google.colab\n")  # Colab imports it at start-up
    kernels = tmp / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Colab rehearsal",
                "language": "python",
            }
        )
    )
    site = load_site(ROOT)
    src = ROOT / CHAPTER
    nb = with_install_cell(json.loads(src.read_text()), site, src, source=venv["wheel"].as_uri())
    nb["cells"].append(
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "rehearsal-probe",
            "metadata": {},
            "outputs": [],
            "source": [
                "import json, sys, torch, wdlib\n",
                "print('REHEARSAL', json.dumps({'wdlib': wdlib.__file__, 'torch': torch.__version__, "
                "'colab': 'google.colab' in sys.modules}))",
            ],
        }
    )
    work = tmp / "work"
    work.mkdir()
    (work / "chapter.ipynb").write_text(json.dumps(nb, indent=1))
    env = _clean_env(
        JUPYTER_PATH=str(tmp / "jupyter"),
        PIP_NO_INDEX="1",  # the install cell's pip, offline: everything from the wheelhouse
        PIP_FIND_LINKS=str(venv["wheelhouse"]),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        WDLIB_STORE=str(tmp / "store"),
        WDLIB_RESULTS_DIR=str(tmp / "results"),
        WDLIB_PROGRESS="0",
        MPLBACKEND="agg",
    )
    papermill = [sys.executable, "-m", "papermill", "--kernel", "colab", "--no-progress-bar", "--cwd", str(work)]
    params = ["-p", "scale", "test", "-p", "device", "cpu", "-p", "seed", "0"]
    _run([*papermill, *params, str(work / "chapter.ipynb"), str(work / "out.ipynb")], work, env, timeout=1500)

    executed = json.loads((work / "out.ipynb").read_text())
    text = "".join(
        "".join(o.get("text", "")) for c in executed["cells"] if c["cell_type"] == "code" for o in c["outputs"]
    )
    probe = json.loads(text.split("REHEARSAL ", 1)[1].splitlines()[0])
    assert probe["colab"] is True
    assert str(tmp / "venv") in probe["wdlib"], f"the chapter imported wdlib from {probe['wdlib']}"
    assert probe["torch"] == venv["torch"], "the install cell replaced the torch the environment had"
    freeze = _run([str(py), "-m", "pip", "freeze"], tmp, _clean_env()).lower()
    for needed in ("mnist1d", "matplotlib", "scipy", "pandas"):
        assert needed in freeze, f"the install cell did not install {needed}"
    for unneeded in ("jupyter-book", "papermill"):
        assert unneeded not in freeze, f"the install cell installed the book's build tools ({unneeded})"
    claims = json.loads((tmp / "results" / "01_l2_vs_decoupled.claims.json").read_text())
    assert claims, "chapter 1 recorded no claims"
