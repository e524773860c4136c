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
