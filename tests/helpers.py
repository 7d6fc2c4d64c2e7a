"""Run the CLI in-process and capture (exit code, stdout, stderr)."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

from llmsim.cli import main


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return code, out.getvalue(), err.getvalue()


def run_json(*args: str):
    code, out, err = run_cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)
