"""pyproject.toml and environment.yml list the same dependencies; the layout is in place."""

import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    wanted = {_norm(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        wanted |= {_norm(r) for r in extra}
    listed = set()
    with open(os.path.join(ROOT, "environment.yml")) as f:
        in_pip = False
        for line in f:
            if line.strip() == "- pip:":
                in_pip = True
                continue
            m = re.match(r"^\s+- (\S.*)$", line)
            if in_pip and m and not line.lstrip().startswith("#"):
                listed.add(_norm(m.group(1)))
    assert listed == wanted, (
        f"only in pyproject: {sorted(wanted - listed)}; only in environment.yml: "
        f"{sorted(listed - wanted)}")


def test_required_layout_and_ci_runs_readme_command():
    for d in ("notebooks", "workbench", "widgets", "tests"):
        assert os.path.isdir(os.path.join(ROOT, d)), d
    ci = open(os.path.join(ROOT, ".ci", "run")).read().strip().splitlines()[-1]
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert ci in readme, f"README does not contain the CI command {ci!r}"


def test_import_workbench_does_not_pull_server_or_torch():
    import subprocess
    import sys

    code = ("import sys, workbench, workbench.engines.vsurge; "
            "bad = [m for m in ('torch', 'fastapi', 'panel', 'uvicorn') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
