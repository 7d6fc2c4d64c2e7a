"""Rewrite the residual table of the error bands (simulator/data/residuals.csv).

    python scripts/make_residuals.py

Re-predicts every record in validate/records/ (the executor's runs, the published FlexGen
runs) and simulates the published serving runs with today's model (validate/residuals.py);
run it after a change to the records or to the model, and commit the file.
tests/test_bands.py fails while the committed file is out of date. Bad input: one line, exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.errors import LlmsimError  # noqa: E402


def main() -> int:
    from validate.residuals import residual_rows, write_residuals
    try:
        rows = residual_rows()
        path = write_residuals(rows=rows)
    except LlmsimError as e:
        sys.stderr.write(f"make_residuals: error: {e}\n")
        return 2
    print(f"{path.relative_to(ROOT)}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
