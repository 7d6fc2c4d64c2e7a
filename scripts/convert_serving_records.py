"""Copy the published serving measurements into validate/records/published/serving/.

    python scripts/convert_serving_records.py [SHARED_DATA_DIR]   # default ../shared/data/serving

- vllm_h100_trainval.csv: copied verbatim (its header names its sources).
- aiconfigurator_silicon_16bit.csv: the header of aiconfigurator_silicon_sample.csv, one line
  saying what was kept, and its rows in 16-bit precision (precision "unrecorded (blank;
  likely bf16)") of the models whose shapes models.yaml holds; the FP8 rows are left out
  (llmsim models 16- and 32-bit compute only).
Rows are kept as published (no unit or value changes). Written atomically.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "validate" / "records" / "published" / "serving"
MODELS_WITH_SHAPES = ("Qwen/Qwen3-32B", "meta-llama/Llama-3.1-8B-Instruct")


def _write(path: Path, data: str | bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else ROOT.parent / "shared" / "data" / "serving"
    OUT.mkdir(parents=True, exist_ok=True)
    _write(OUT / "vllm_h100_trainval.csv", (src / "vllm_h100_trainval.csv").read_bytes())
    lines = (src / "aiconfigurator_silicon_sample.csv").read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    rows = list(csv.DictReader(io.StringIO("\n".join(body))))
    keep = [r for r in rows if r["precision"].startswith("unrecorded") and r["model"] in MODELS_WITH_SHAPES]
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(keep)
    note = (f"# Kept by llmsim's scripts/convert_serving_records.py: the {len(keep)} rows in 16-bit precision "
            f"(precision 'unrecorded') of {', '.join(MODELS_WITH_SHAPES)}; values as published.")
    _write(OUT / "aiconfigurator_silicon_16bit.csv", "\n".join(header + [note]) + "\n" + out.getvalue())
    print(f"{OUT.relative_to(ROOT)}: vllm_h100_trainval.csv, aiconfigurator_silicon_16bit.csv ({len(keep)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
