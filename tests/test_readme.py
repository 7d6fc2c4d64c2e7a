"""The README opens with the two commands, and CI runs the second one verbatim."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    return block[0], block[1]


def test_readme_opens_with_run_and_test_commands():
    run, test = _commands()
    assert run.startswith("pip install ") and "llmsim " in run
    assert "pytest" in test


def test_ci_runs_the_readme_test_command():
    _, test = _commands()
    assert test in (ROOT / ".ci" / "run").read_text()
