"""The repository's layout as pyproject.toml and mvm/__init__.py state it, checked from the sources.

One installed package, `mvm`: the folder mvm/ is the ground floor and each stage folder installs as
`mvm.<folder>`. Arrows run down only: the ground floor imports no stage, train never imports probe,
ingest and synth import no later stage, probe does not import slurm. No file imports a stage by its
bare folder name (`import train` works only from the repository root, never once installed).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own TOML parser
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
FLOOR = "ground floor"
STAGES = ("synth", "ingest", "train", "probe", "slurm")
"""Stage folders at the repository's top level, each installed as mvm.<folder>."""
NOT_INSTALLED = ("bench", "tests")
"""Folders with Python files that stay out of the wheel (`python -m bench.run`, pytest)."""
FORBIDDEN = {
    FLOOR: set(STAGES),
    "synth": {"train", "probe", "slurm"},
    "ingest": {"train", "probe", "slurm"},
    "train": {"probe", "slurm"},
    "probe": {"slurm"},
}
"""Layer -> the layers it may not import (slurm, the top, may import every stage)."""
SKIPPED_DIRS = {"__pycache__", "build", "dist", "demo", "sweep", "runs", "shards"}


def python_files(folder: Path) -> list[Path]:
    """Every .py under `folder`, skipping hidden folders (.venv, caches) and run outputs."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [
            d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS and not d.endswith(".egg-info")
        ]
        found += [Path(root) / name for name in files if name.endswith(".py")]
    return sorted(found)


def installed_name(path: Path) -> str:
    """The dotted module name a source file has once installed: mvm/x.py -> mvm.x, train/x.py -> mvm.train.x."""
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = ["mvm"] + ([] if folder == "mvm" else [folder]) + rest
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str, int]]:
    """(line, absolute module name, relative level) of every import in `source`, lazy ones included.

    `from a import b` yields a.b too (b may be a submodule: `from mvm import train`). Relative imports
    resolve against `module` (the file's dotted name; `is_package` for an __init__.py)."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.append((node.lineno, base, node.level))
            found += [
                (node.lineno, f"{base}.{alias.name}", node.level) for alias in node.names if alias.name != "*"
            ]
    return found


def layer_of(module: str) -> str | None:
    """The layer a module belongs to: a stage, the ground floor (the rest of mvm), or None (not ours)."""
    parts = module.split(".")
    if parts[0] != "mvm":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else FLOOR


def import_edges() -> list[tuple[str, str, str]]:
    """(where, from layer, to layer) for every import between our layers in the installed folders."""
    edges = []
    for folder in ("mvm", *STAGES):
        for path in python_files(REPO / folder):
            module = installed_name(path)
            source_layer = layer_of(module)
            for line, name, _ in imported_modules(path.read_text(), module, path.name == "__init__.py"):
                target = layer_of(name)
                if target is not None and target != source_layer:
                    edges.append((f"{path.relative_to(REPO)}:{line} imports {name}", source_layer, target))
    return edges


def importable(cwd: Path, *, python_path: str | None = None, flags: tuple[str, ...] = ()) -> list[str]:
    """Which of mvm.train and the bare stage names a fresh interpreter started in `cwd` can find."""
    names = ("mvm.train", *STAGES)
    code = f"import importlib.util as u; print(' '.join(n for n in {names!r} if u.find_spec(n)))"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update({"PYTHONPATH": python_path} if python_path else {})
    found = subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return found.stdout.split()


@pytest.mark.parametrize(
    ("source", "module", "is_package", "expected"),
    [
        ("from mvm import train", "mvm.shards", False, {"mvm", "mvm.train"}),
        ("from ..probe import run", "mvm.train.loop", False, {"mvm.probe", "mvm.probe.run"}),
        ("from . import data", "mvm.train", True, {"mvm.train", "mvm.train.data"}),
        ("def f():\n    import mvm.probe.cli", "mvm.train.loop", False, {"mvm.probe.cli"}),
    ],
)
def test_imports_resolve_relative_from_and_lazy_forms(source, module, is_package, expected):
    assert {name for _, name, _ in imported_modules(source, module, is_package)} == expected


def test_no_import_arrow_points_up():
    edges = import_edges()
    # Every stage stands on the ground floor: an empty graph would mean the parser saw nothing.
    assert {source for _, source, target in edges if target == FLOOR} == set(STAGES)
    upward = [where for where, source, target in edges if target in FORBIDDEN.get(source, ())]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_nothing_imports_a_stage_by_its_bare_folder_name():
    bare = []
    for path in python_files(REPO):
        # Only absolute names matter here, so relative imports need no module to resolve against.
        for line, name, level in imported_modules(path.read_text(), module=""):
            if level == 0 and name.split(".")[0] in STAGES:
                bare.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not bare, "\n".join(
        ["use mvm.<stage>; bare stage names resolve only at the repository root:", *bare]
    )


def test_setuptools_config_installs_mvm_and_every_stage_under_it():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = config["tool"]["setuptools"]
    expected = {"mvm": "mvm", **{f"mvm.{stage}": stage for stage in STAGES}}
    assert setuptools["package-dir"] == expected
    assert sorted(setuptools["packages"]) == sorted(expected)
    for folder in expected.values():
        assert (REPO / folder / "__init__.py").is_file(), folder
    # A new top-level package folder must be mapped under mvm (or be one of the uninstalled ones).
    packages = {path.parent.name for path in REPO.glob("*/__init__.py")}
    assert packages <= set(expected.values()) | set(NOT_INSTALLED)
    for script, target in config["project"]["scripts"].items():
        module, function = target.split(":")
        path = REPO / expected[module.rsplit(".", 1)[0]] / (module.rsplit(".", 1)[1] + ".py")
        defined = {node.name for node in ast.parse(path.read_text()).body if hasattr(node, "name")}
        assert function in defined, f"{script} -> {target}: no {function} in {path}"


def test_the_development_install_serves_mvm_and_no_bare_stage_name(tmp_path):
    """`make setup`'s editable install maps mvm.<stage> to the folders; outside the repository
    root (pytest's pythonpath) `import train` must fail, as it does for a user of the wheel."""
    assert importable(tmp_path) == ["mvm.train"]


@pytest.mark.slow
def test_wheel_holds_one_top_level_package_and_bare_stage_names_do_not_import(tmp_path):
    """Build the wheel from a copy of the sources (the build writes build/ and *.egg-info next to
    pyproject.toml), install it into a folder and look for `train` from outside the repository."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((REPO / name).read_bytes())
    for folder in ("mvm", *STAGES, *NOT_INSTALLED):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                target = source / path.relative_to(REPO)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.read_bytes())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("mvm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"mvm", wheel.name.split("-py")[0] + ".dist-info"}
    assert {f"mvm/{stage}/__init__.py" for stage in STAGES} <= set(names)
    assert "mvm/slurm/scaling.sh" in names

    target = tmp_path / "site"
    install = [*pip, "install", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    # -S: without site-packages, so the editable install of this checkout cannot answer instead.
    assert importable(tmp_path, python_path=str(target), flags=("-S",)) == ["mvm.train"]
