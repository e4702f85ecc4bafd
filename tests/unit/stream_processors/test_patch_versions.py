"""The workers refuse an upstream version the framework patches were not verified against."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from settlement.errors import SettleError
from stream_processors import patches
from stream_processors.patches import VERIFIED, UnverifiedUpstream, check_versions, install_all


def _versions(**overrides: str | None) -> dict[str, str | None]:
    versions: dict[str, str | None] = dict(VERIFIED)
    versions.update({name.replace("_", "-"): v for name, v in overrides.items()})
    return versions


def test_the_installed_versions_are_the_verified_ones() -> None:
    check_versions()  # what make venv installs from constraints.txt
    assert {name: patches.installed_version(name) for name in VERIFIED} == VERIFIED


@pytest.mark.parametrize(("package", "found"), [
    ("faust-streaming", "0.15.4"),
    ("mode-streaming", "0.8.0"),
    ("aiokafka", "0.13.0"),
    ("aiokafka", None),
])
def test_another_version_is_refused_with_the_package_and_both_versions(
        package: str, found: str | None) -> None:
    versions = {**VERIFIED, package: found}
    with pytest.raises(UnverifiedUpstream) as raised:
        check_versions(versions.get)
    message = str(raised.value)
    assert isinstance(raised.value, SettleError)
    assert f"{package} {found or '(not installed)'} (verified: {VERIFIED[package]})" in message
    # Only the package that differs is named as found; every pin is named as verified.
    others = [name for name in VERIFIED if name != package]
    assert all(f"{name} {VERIFIED[name]} (verified" not in message for name in others)
    assert all(f"{name}=={version}" in message for name, version in VERIFIED.items())


def test_install_all_refuses_before_patching_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    monkeypatch.setattr(patches.importlib, "import_module",
                        lambda name: imported.append(name))  # would fail on .install()
    with pytest.raises(UnverifiedUpstream):
        install_all(_versions(faust_streaming="0.16.0").get)
    assert imported == []


def test_base_app_refuses_an_unverified_version(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    from infra.config import load
    from stream_processors.app import base_app

    monkeypatch.setattr(patches, "installed_version", _versions(aiokafka="0.15.0").get)
    settings = load({"SETTLE_RUN_DIR": str(tmp_path)})
    with pytest.raises(UnverifiedUpstream, match=r"aiokafka 0\.15\.0 \(verified: 0\.14\.0\)"):
        base_app("t-unverified", settings, settings.processor)


def _fake_distribution(root: Path, name: str, version: str) -> Path:
    """A distribution's metadata, as pip leaves it, that importlib.metadata finds first."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


def test_the_worker_command_exits_non_zero_naming_the_unverified_version(
        tmp_path: Path) -> None:
    """`settle worker validate` with a faust-streaming 0.16.0 installed (its metadata first
    on the path): one clear line and exit status 1, before any connection is made."""
    site = _fake_distribution(tmp_path / "site", "faust-streaming", "0.16.0")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "SETTLE_RUN_DIR": str(tmp_path / "run"), "SETTLE_METRICS_PORT": "0",
        "SETTLE_SIGNATURES": "off", "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "settle.cli", "worker", "validate"], env=env,
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    stderr = " ".join(proc.stderr.split())
    assert "UnverifiedUpstream" in stderr, stderr[-2000:]
    assert "faust-streaming 0.16.0 (verified: 0.15.3)" in stderr, stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
