"""Every package a module imports is declared in pyproject.toml, in the install that module
runs under: the core install (the planner and its command line), the ``torch`` extra (the
executor, the profilers and the commands that drive them), the ``test`` extra (the tests).

A dependency that arrives by chance through another package (click through typer, once)
works until that package stops depending on it; this test fails first."""

from __future__ import annotations

import ast
import importlib.metadata as md
import pathlib
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
OURS = {"llmsim", "simulator", "hardware_profiles", "validate", "helpers", "conftest", "benchmarks"}
# Modules of the command line that run only with the torch extra (imported lazily by their command).
TORCH_COMMANDS = {"llmsim/validate_command.py", "llmsim/profile_command.py", "llmsim/suites.py", "llmsim/gpu_check.py",
                  "llmsim/serving_suite.py"}


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def _declared() -> dict[str, set[str]]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_name(r) for r in proj["dependencies"]}
    extras = {k: {_name(r) for r in v} for k, v in proj.get("optional-dependencies", {}).items()}
    return {"core": core, "torch": core | extras.get("torch", set()),
            "test": core | extras.get("torch", set()) | extras.get("test", set())}


def _top_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def _install_of(rel: str) -> str:
    if rel.startswith(("tests/", "benchmarks/")):
        return "test"
    if rel.startswith(("simulator/", "llmsim/")) and rel not in TORCH_COMMANDS:
        return "core"
    return "torch"


def _undeclared() -> list[str]:
    declared = _declared()
    dists = md.packages_distributions()
    missing = []
    for folder in ("llmsim", "simulator", "hardware_profiles", "validate", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            allowed = declared[_install_of(rel)]
            for mod in sorted(_top_imports(path) - OURS - set(sys.stdlib_module_names) - {"tomli"}):
                names = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
                if not names & allowed:
                    missing.append(f"{rel}: imports {mod} (distribution {', '.join(sorted(names))}), "
                                   f"not declared for the {_install_of(rel)} install")
    return missing


def test_every_import_is_declared_where_it_runs():
    assert not _undeclared(), "\n".join(_undeclared())


def test_the_core_install_needs_no_torch():
    declared = _declared()
    assert "torch" not in declared["core"] and "torch" in declared["torch"]
