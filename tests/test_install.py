"""Install-time check: pyproject.toml's pins admit the newest jax that the package index serves.

Colab and the accelerator images ship the newest jax; `pip install -e .` there must leave that
jax in place instead of downgrading it. The test asks pip (the one running these tests) which
jax is newest, then dry-runs the resolution of this checkout beside exactly that jax, for a
Python version that jax supports (the newest jax may need a newer Python than the one running
the tests). Nothing is installed. Skipped only when the package index cannot be reached.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest
from packaging.specifiers import SpecifierSet

ROOT = pathlib.Path(__file__).resolve().parents[1]

# pip's messages when it cannot reach the index (offline machine, no DNS, proxy refused).
_UNREACHABLE = (
    "Could not fetch URL",
    "Failed to establish a new connection",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ProxyError",
    "SSLError",
)


def _pip(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _errors(proc: subprocess.CompletedProcess) -> str:
    """pip's last lines, less the warnings about absent local index folders."""
    lines = [
        line for line in (proc.stdout + proc.stderr).splitlines()
        if line.strip() and not line.startswith("WARNING: Location")
    ]
    return "\n".join(lines[-15:])


def _skip_if_unreachable(proc: subprocess.CompletedProcess, what: str) -> None:
    output = proc.stdout + proc.stderr
    if any(marker in output for marker in _UNREACHABLE):
        pytest.skip(f"package index unreachable ({what}): {_errors(proc)}")


def _newest_jax() -> str:
    """The newest jax release on the index, whatever Python it requires."""
    proc = _pip("index", "versions", "jax", "--ignore-requires-python", "--json")
    if proc.returncode != 0:
        _skip_if_unreachable(proc, "pip index versions jax")
        if "No matching distribution found" in proc.stderr:
            pytest.skip(f"package index unreachable (pip finds no jax at all): {_errors(proc)}")
        pytest.fail(f"pip index versions jax failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout)["latest"]


def _target_python(jax_version: str, tmp_path: pathlib.Path) -> str:
    """This interpreter's X.Y if that jax supports it, else the oldest 3.Y that it supports."""
    report = tmp_path / "jax-only.json"
    proc = _pip(
        "install", "--dry-run", "--quiet", "--ignore-installed", "--ignore-requires-python",
        "--no-deps", "--only-binary=:all:", "--report", str(report), f"jax=={jax_version}",
    )
    if proc.returncode != 0:
        _skip_if_unreachable(proc, f"jax=={jax_version} metadata")
        pytest.fail(f"pip could not read jax=={jax_version}'s metadata:\n{_errors(proc)}")
    (item,) = json.loads(report.read_text())["install"]
    requires = SpecifierSet(item["metadata"].get("requires_python") or "")
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here in requires:
        return here
    for minor in range(sys.version_info.minor + 1, 30):
        if f"3.{minor}" in requires:
            return f"3.{minor}"
    pytest.fail(f"no Python 3.x satisfies jax=={jax_version}'s Requires-Python {requires}")


def test_pins_keep_the_newest_jax(tmp_path: pathlib.Path) -> None:
    newest = _newest_jax()
    python_version = _target_python(newest, tmp_path)
    report = tmp_path / "report.json"
    proc = _pip(
        "install", "--dry-run", "--ignore-installed", "--report", str(report),
        "--python-version", python_version, "--only-binary=:all:",
        f"jax=={newest}", str(ROOT),
    )
    if proc.returncode != 0:
        _skip_if_unreachable(proc, "resolving ladder_jax beside the newest jax")
        pytest.fail(
            f"pip cannot install ladder_jax ({ROOT}) beside jax=={newest} (Python "
            f"{python_version}): pyproject.toml's pins exclude it or one of its dependencies "
            f"caps jax below it.\n{_errors(proc)}"
        )
    installs = {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "ladder-jax" in installs, installs
    assert installs.get("jax") == newest, (
        f"resolving ladder_jax beside jax=={newest} picked jax {installs.get('jax')}: {installs}"
    )
    print(f"newest jax {newest} (Python {python_version}) resolves with: "
          + ", ".join(f"{name}=={installs[name]}" for name in sorted(installs)
                      if name in ("jax", "jaxlib", "optax", "orbax-checkpoint", "numpy")))
