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


# ---- the wheel a Colab user installs -------------------------------------------------------------

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), ROOT],
                   check=True, timeout=600)
    (path,) = out.glob("workbench-*.whl")
    return path


@pytest.mark.slow
def test_wheel_installs_with_only_runtime_dependencies(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=900)
    code = ("import sys, workbench, widgets; from widgets import WorkbenchApp; "
            "import widgets.dashboard; from workbench import Workbench; "
            "assert 'torch' not in sys.modules; "
            "import importlib.util as u; assert u.find_spec('torch') is None, 'torch installed'; "
            "print(workbench.__file__)")
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=str(tmp_path), env={"PATH": os.environ["PATH"],
                                               "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr
    assert str(venv) in r.stdout  # the installed copy, not the source tree


def _py312_requirements() -> list[str]:
    from packaging.requirements import Requirement

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    env = {"python_version": "3.12", "python_full_version": "3.12.1"}
    out = []
    for d in deps:
        req = Requirement(d)
        if req.marker is None or req.marker.evaluate(env):
            req.marker = None
            out.append(str(req))
    return out


def _python312() -> str | None:
    """A working Python 3.12 interpreter on this machine, if there is one (pyenv's included)."""
    import glob

    candidates = [shutil.which("python3.12")] + sorted(
        glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")))
    for c in filter(None, candidates):
        ok = subprocess.run([c, "-m", "pip", "--version"], capture_output=True, timeout=60)
        if ok.returncode == 0:
            return c
    return None


@pytest.mark.slow
def test_pins_resolve_on_python_312(wheel, tmp_path):
    """Colab runs Python 3.12, where Panel 1.10 pairs with Bokeh 3.10."""
    import json

    reqs = _py312_requirements()
    assert "panel==1.10.*" in reqs and "bokeh==3.10.*" in reqs and "panel==1.9.*" not in reqs
    report = tmp_path / "report.json"
    (tmp_path / "req.txt").write_text("\n".join(reqs))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--dry-run",
                    "--ignore-installed", "--python-version", "3.12", "--only-binary=:all:",
                    "--target", str(tmp_path / "t"), "--report", str(report),
                    "-r", str(tmp_path / "req.txt")], check=True, timeout=600)
    got = {i["metadata"]["name"]: i["metadata"]["version"]
           for i in json.loads(report.read_text())["install"]}
    assert got["panel"].startswith("1.10.") and got["bokeh"].startswith("3.10.")
    python312 = _python312()
    if python312:  # a real 3.12 interpreter evaluates the wheel's markers itself
        r = subprocess.run([python312, "-m", "pip", "install", "-q", "--dry-run",
                            "--ignore-installed", "--report", str(report), str(wheel)],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        got = {i["metadata"]["name"]: i["metadata"]["version"]
               for i in json.loads(report.read_text())["install"]}
        assert got["panel"].startswith("1.10.") and got["bokeh"].startswith("3.10.")
