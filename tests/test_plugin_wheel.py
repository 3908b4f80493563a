"""What ``pip install kvspec`` puts in a user's environment: one ``kvspec`` package (with
the pytest plugin and the command declared), and no top-level ``spec``, ``impl``,
``conformance`` or ``benchmarks`` to shadow, or be shadowed by, the user's own folders.

The wheel is built once from a copy of the sources and checked as a file list, then
imported from an unpacked copy by a Python that sees nothing else (no site-packages, not
the repository)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("spec", "impl", "conformance", "benchmarks")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("kvspec", *FOLDERS):
        shutil.copytree(ROOT / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(out), str(src)],
                   check=True, capture_output=True)
    return next(out.glob("kvspec-*.whl"))


def test_the_wheel_installs_one_kvspec_package_and_nothing_else(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"kvspec", "kvspec-0.1.0.dist-info"}


def test_every_module_of_the_repository_folders_is_in_the_wheel(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"kvspec/{p.relative_to(ROOT).as_posix()}" for folder in FOLDERS
               for p in (ROOT / folder).rglob("*.py")}
    assert sources - names == set()


def test_the_wheel_declares_the_command_and_the_pytest_plugin(wheel: Path):
    with zipfile.ZipFile(wheel) as whl:
        entry_points = whl.read("kvspec-0.1.0.dist-info/entry_points.txt").decode()
    assert "[console_scripts]\nkvspec = kvspec.conformance.cli:main" in entry_points
    assert "[pytest11]\nkvspec = kvspec.conformance.pytest_plugin" in entry_points


def test_import_kvspec_works_and_no_top_level_folder_is_importable(wheel: Path, tmp_path):
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(unpacked)!r})\n"
        "import kvspec, kvspec.spec.pool, kvspec.impl.block_pool\n"
        "print(kvspec.__version__, kvspec.__file__.startswith(sys.path[0]))\n"
        f"print([n for n in {FOLDERS!r} if importlib.util.find_spec(n) is not None])\n"
    )
    # -S: no site-packages (where the development install lives); cwd: not the repository.
    done = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["0.1.0 True", "[]"]
