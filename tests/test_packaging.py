"""pyproject.toml and environment.yml must list the same dependencies with the same pins."""

import tomllib

import yaml
from packaging.requirements import Requirement

from tests.conftest import ROOT


def test_pyproject_and_environment_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))

    def spec(lines):
        return {Requirement(x).name.lower(): str(Requirement(x).specifier) for x in lines}

    assert spec(project["dependencies"]) == spec(pip)
    assert python == "python=3.11" and "3.11" in project["requires-python"]
    assert spec(project["dependencies"])["torch"] == "==2.14.1"
    assert spec(project["dependencies"])["torchvision"] == "==0.29.1"


def test_no_tracked_file_names_a_machine_path():
    """Data is found through DST_DATA_ROOT or a path relative to the checkout, never through
    an absolute path of one particular machine."""
    import re
    import shutil
    import subprocess

    import pytest

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                           check=True).stdout.split()
    pattern = re.compile(r"(?<![\w.])/(work|home/\w+|Users/\w+)/")
    hits = [f"{name}:{n}" for name in files if not name.endswith((".ipynb", ".png", ".svg"))
            and (ROOT / name).is_file()
            for n, line in enumerate((ROOT / name).read_text(errors="ignore").splitlines(), 1)
            if pattern.search(line)]
    assert not hits, f"absolute machine paths in tracked files: {hits}"
