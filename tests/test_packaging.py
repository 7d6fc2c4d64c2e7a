"""The wheel that ``pip install .`` builds holds every module and data file of the tree: a
package left out of pyproject.toml (simulator.engines, once) breaks the README's first
command on a fresh machine while every test run from the checkout passes."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("llmsim", "simulator", "hardware_profiles", "validate")
DATA = {"hardware_profiles": ("data/*.yaml",), "simulator": ("serving/traces/*.csv", "data/*.csv", "templates/*"),
        "validate": ("records/**/*",)}


def _tree_files() -> set[str]:
    files = set()
    for pkg in PACKAGES:
        files |= {p.relative_to(ROOT).as_posix() for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
        for pattern in DATA.get(pkg, ()):
            files |= {p.relative_to(ROOT).as_posix() for p in (ROOT / pkg).glob(pattern)
                      if p.is_file() and "__pycache__" not in p.parts}
    return files


def _clean_copy(dst: pathlib.Path) -> pathlib.Path:
    """The files git knows (tracked, and untracked but not ignored): what a clean clone holds,
    without a stale build/ folder that could hide a left-out package."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_data_file(tmp_path):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout")
    src = _clean_copy(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(src)], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("llmsim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(f for f in _tree_files() if f not in names)
    assert not missing, f"pip install . would leave out: {missing[:20]}"
