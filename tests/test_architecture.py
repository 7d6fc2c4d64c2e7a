"""Architecture rules: simulator/ never imports torch; dependency direction is respected."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _imports(package: str) -> set[tuple[str, str]]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {(str(path.relative_to(ROOT)), a.name.split(".")[0]) for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add((str(path.relative_to(ROOT)), node.module.split(".")[0]))
    return found


def test_simulator_never_imports_torch_or_other_packages_of_ours():
    bad = {(f, m) for f, m in _imports("simulator") if m in ("torch", "transformers")}
    # hardware_profiles and validate are imported only by the CLI's `profile` and `validate`
    # commands, inside the command functions (the next test checks nothing is loaded eagerly).
    bad |= {(f, m) for f, m in _imports("simulator") if m in ("hardware_profiles", "validate")
            and not f.endswith("cli.py")}
    assert not bad, f"simulator/ must not import these: {sorted(bad)}"


def test_dependency_direction():
    # hardware_profiles -> simulator <- validate: the profilers never import the executor.
    assert not {(f, m) for f, m in _imports("hardware_profiles") if m == "validate"}


def test_importing_the_planner_loads_no_torch():
    code = ("import sys, simulator, simulator.cost, simulator.cli, simulator.report, simulator.memory;"
            "import simulator.search;" if (ROOT / "simulator" / "search.py").exists() else
            "import sys, simulator, simulator.cost, simulator.cli, simulator.report, simulator.memory;")
    code += "assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
