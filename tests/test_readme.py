"""The README opens with the two commands, and CI runs both verbatim: the first in a fresh
virtual environment without extras, before the second."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    return block[0], block[1]


def _ci_lines() -> list[str]:
    return [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]


def test_readme_opens_with_run_and_test_commands():
    run, test = _commands()
    assert run.startswith("pip install ") and "llmsim " in run and "[" not in run  # no extras
    assert "pytest" in test


def test_ci_runs_both_readme_commands_verbatim_first_one_first():
    run, test = _commands()
    lines = _ci_lines()
    assert run in lines and test in lines
    assert lines.index(run) < lines.index(test)


def test_ci_runs_the_first_command_in_its_own_fresh_venv():
    run, _ = _commands()
    lines = _ci_lines()
    i = lines.index(run)
    before = lines[:i]
    venv = max(k for k, line in enumerate(before) if line.startswith("python3 -m venv "))
    name = lines[venv].split()[-1]
    assert f". {name}/bin/activate" in before[venv:], "the first command must run inside the fresh venv"
    assert not any("pip install" in line for line in before[venv + 1:] if "--upgrade pip" not in line), \
        "nothing may be installed into that venv before the README's command"
    assert any(line.startswith(f"rm -rf {name}") for line in before[:venv]), "the venv must start empty"
