"""Architecture rules: the dependency direction hardware_profiles -> simulator <- validate,
the command line (llmsim/) above all three, and no torch in the planner."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("llmsim", "simulator", "hardware_profiles", "validate")


def _imports(package: str) -> set[tuple[str, str]]:
    """(file, top-level module) for every import statement in ``package``, lazy ones included."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


def test_simulator_imports_neither_torch_nor_the_other_packages():
    bad = {(f, m) for f, m in _imports("simulator")
           if m in ("torch", "transformers", "hardware_profiles", "validate", "llmsim")}
    assert not bad, f"simulator/ must not import these: {sorted(bad)}"


def test_dependency_direction():
    # hardware_profiles -> simulator <- validate; nothing imports the command line, which alone
    # drives the profiler and the executor together (the CI suite, the GPU check).
    assert not {(f, m) for f, m in _imports("hardware_profiles") if m in ("validate", "llmsim")}
    assert not {(f, m) for f, m in _imports("validate") if m in ("llmsim", "hardware_profiles")}


def test_importing_the_planner_and_its_cli_loads_no_torch():
    code = ("import sys, simulator, simulator.cost, simulator.report, simulator.memory, simulator.search, "
            "llmsim.cli; assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
