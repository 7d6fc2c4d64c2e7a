"""The residual table of ``simulator.bands``: every record re-predicted by today's model.

Rows (``simulator.bands.COLUMNS``), one per (record, metric):
- the JSON records under ``validate/records/`` (the executor's runs and published runs):
  the metric each is gated on (``harness.record_metric``: ``throughput_tok_s``, or the
  latency a published multi-GPU run states), re-predicted by ``harness.repredict`` with the record's
  engine and profile; regime = the estimate's bottleneck (a ``Bound`` value);
- the published serving runs (``serving_records``): the mean TTFT, inter-token latency (as
  ``tpot_mean_s``) and E2E that the serving comparison gates (``Case.compared``), simulated
  with llmsim's ``vllm`` engine; regime = ``open-loop`` (the vLLM rate stages) or
  ``closed-loop`` (the fixed-concurrency rows); group = the experiment, so that a
  leave-one-out check leaves out all its stages at once.
Hardware class: ``simulator.bands.hardware_class`` of the profile each is predicted on.

``python scripts/make_residuals.py`` rewrites ``simulator/data/residuals.csv``;
``tests/test_bands.py`` fails when the committed file no longer matches.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path

from simulator.bands import COLUMNS, RESIDUALS_FILE, hardware_class
from simulator.hardware import load_profile
from validate.harness import DEFAULT_RECORDS_DIR, load_records, predicted_summary, record_metric, record_profile, repredict

SERVING_METRICS = {"ttft_mean_s": "ttft_mean_s", "itl_mean_s": "tpot_mean_s", "e2e_mean_s": "e2e_mean_s"}


def record_rows(records_dir=DEFAULT_RECORDS_DIR) -> list[dict]:
    """Rows of the JSON records in ``records_dir`` and its subfolders (``profiles/`` aside)."""
    root = Path(records_dir)
    rows = []
    for d in sorted({p.parent for p in root.rglob("*.json") if p.parent.name != "profiles"}):
        for path, rec in load_records(d):
            est = repredict(rec, d, path)
            hw = record_profile(rec, d)
            name = path.relative_to(root).as_posix()
            metric = record_metric(rec)  # throughput, or the latency a published run states
            rows.append({"record": name, "group": name,
                         "kind": "published" if rec.get("kind") == "published" else "executor",
                         "engine": est.engine, "hardware": hw.name, "hardware_class": hardware_class(hw),
                         "regime": est.bottleneck, "metric": metric,
                         "measured": float(rec["measured"][metric]),
                         "predicted": float(predicted_summary(est)[metric])})
    return rows


def serving_rows(directory=None, engine: str = "vllm") -> list[dict]:
    """Rows of the published serving runs that ``serving_records.compare`` re-predicts."""
    from validate import serving_records as sr
    directory = sr.PUBLISHED_DIR if directory is None else directory
    cases = [c for c in sr.load_cases(directory) if not c.skip]
    by_name = {c.name: c for c in cases}
    table = sr.compare(directory, engine, cases=cases)
    classes = {}
    rows = []
    for r in table.itertuples():
        if not r.gated or r.metric not in SERVING_METRICS:
            continue
        case = by_name[r.case]
        profile = sr.HARDWARE[case.gpu]
        if profile not in classes:
            classes[profile] = hardware_class(load_profile(profile))
        group = f"published/serving/{r.source}#{r.case}"
        rows.append({"record": f"{group}#{r.stage}", "group": group, "kind": "published", "engine": engine,
                     "hardware": profile, "hardware_class": classes[profile],
                     "regime": "closed-loop" if case.concurrency is not None else "open-loop",
                     "metric": SERVING_METRICS[r.metric], "measured": float(r.measured),
                     "predicted": float(r.predicted)})
    return rows


def residual_rows(records_dir=DEFAULT_RECORDS_DIR, serving_dir=None) -> list[dict]:
    return record_rows(records_dir) + serving_rows(serving_dir)


HEADER = ("# Residuals of llmsim's predictions on the recorded runs (simulator.bands): one row per (record, metric),\n"
          "# measured and predicted by today's model. Derived data: rewrite with `python scripts/make_residuals.py`\n"
          "# (validate/residuals.py) after a change to the records or to the model.\n")


def to_csv(rows) -> str:
    buf = io.StringIO()
    buf.write(HEADER)
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: repr(r[k]) if isinstance(r[k], float) else r[k] for k in COLUMNS})
    return buf.getvalue()


def write_residuals(path=RESIDUALS_FILE, rows=None) -> Path:
    """Write the residual table to ``path`` atomically (a unique temporary name, then rename)."""
    path = Path(path)
    text = to_csv(residual_rows() if rows is None else rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
