"""Predicted vs measured: records of real runs and their re-prediction.

A record is one JSON file: the case (model spec, workload, the policy as the executor
realized it, device), the profile it was predicted from (a copy kept beside the records,
``profiles/<name>.yaml``), what was measured, what was predicted then, the relative errors,
and the machine and software versions. ``check_records`` re-predicts every record with
today's cost model and profile files, so a change to the model that breaks accuracy on real
hardware fails CI.

Relative error: ``(predicted - measured) / measured`` (positive = the model is optimistic
about time, i.e. predicts less time... for throughput, positive = predicts more tokens/s).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from simulator.cost import Estimate, estimate
from simulator.errors import LlmsimError
from simulator.hardware import load_profile
from simulator.models import ModelSpec
from simulator.policy import Policy, Workload

RECORD_SCHEMA = 1
DEFAULT_RECORDS_DIR = Path(__file__).resolve().parent / "records"
METRICS = ("throughput_tok_s", "prefill_latency_s", "decode_latency_s", "total_latency_s",
           "decode_throughput_tok_s")
# Gates for `llmsim validate --records` (issue 5): stored GPU/CPU records.
RECORDS_MEDIAN_LIMIT = 0.05
RECORDS_MAX_LIMIT = 0.15


def rel_error(predicted, measured) -> float | None:
    if predicted is None or measured is None or not measured:
        return None
    return (float(predicted) - float(measured)) / float(measured)


def errors_of(predicted: dict, measured: dict) -> dict:
    return {k: rel_error(predicted.get(k), measured.get(k)) for k in METRICS}


def predicted_summary(est: Estimate) -> dict:
    return {"throughput_tok_s": est.throughput_tok_s, "decode_throughput_tok_s": est.decode_throughput_tok_s,
            "prefill_latency_s": est.prefill_latency_s, "decode_latency_s": est.decode_latency_s,
            "total_latency_s": est.total_latency_s, "peak_memory_bytes": est.peak_memory_bytes,
            "bottleneck": est.bottleneck, "feasible": est.feasible, "breakdown": est.breakdown}


def make_record(name: str, model: ModelSpec, workload: Workload, policy: Policy, device: str, profile_name: str,
                profile_file: str, measured: dict, est: Estimate, machine: dict, versions: dict,
                notes: list | None = None) -> dict:
    pred = predicted_summary(est)
    return {
        "schema_version": RECORD_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "case": {"name": name, "model": model.to_dict(), "workload": workload.to_dict(), "policy": policy.to_dict(),
                 "device": device},
        "profile": {"name": profile_name, "file": profile_file},
        "measured": measured, "predicted": pred, "errors": errors_of(pred, measured),
        "machine": machine, "versions": versions, "notes": list(notes or []),
    }


def record_id(rec: dict) -> str:
    key = json.dumps(rec["case"], sort_keys=True) + rec["created"]
    return f"{rec['created'][:10]}-{rec['case']['name']}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def write_record(rec: dict, records_dir, profile_path) -> Path:
    """Append ``rec`` to ``records_dir`` (atomically), keeping a copy of its profile in
    ``records_dir/profiles/`` so the record can be re-predicted later."""
    d = Path(records_dir)
    (d / "profiles").mkdir(parents=True, exist_ok=True)
    prof_copy = d / rec["profile"]["file"]
    if Path(profile_path).resolve() != prof_copy.resolve():
        tmp = prof_copy.with_suffix(".yaml.tmp")
        shutil.copyfile(profile_path, tmp)
        os.replace(tmp, prof_copy)
    path = d / f"{record_id(rec)}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=2, sort_keys=False, default=float) + "\n")
    os.replace(tmp, path)
    return path


def load_records(records_dir) -> list[tuple[Path, dict]]:
    d = Path(records_dir)
    if not d.is_dir():
        raise LlmsimError(f"--records: no such directory {str(records_dir)!r}")
    out = []
    for path in sorted(d.glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise LlmsimError(f"{path}: not a readable record: {e}") from None
        if not isinstance(rec, dict) or rec.get("schema_version") != RECORD_SCHEMA:
            raise LlmsimError(f"{path}: schema_version {rec.get('schema_version') if isinstance(rec, dict) else None!r} "
                              f"is not {RECORD_SCHEMA}")
        out.append((path, rec))
    return out


def repredict(rec: dict, records_dir, path: Path | None = None) -> Estimate:
    """Today's estimate for a stored record, from its profile copy beside the records."""
    where = str(path or "record")
    try:
        case = rec["case"]
        model = ModelSpec.from_dict(case["model"], f"{where}: case.model")
        wl = case["workload"]
        workload = Workload(wl["prompt_len"], wl["gen_len"], wl.get("num_sequences"))
        policy = Policy.from_dict(case["policy"], f"{where}: case.policy")
        profile = Path(records_dir) / rec["profile"]["file"]
    except KeyError as e:
        raise LlmsimError(f"{where}: missing key {e}") from None
    return estimate(model, load_profile(profile), workload, policy)


def summarize(errors: list[float]) -> tuple[float, float]:
    a = np.abs(np.asarray([e for e in errors if e is not None], float))
    if a.size == 0:
        return math.nan, math.nan
    return float(np.median(a)), float(a.max())


def check_records(records_dir, median_limit: float = RECORDS_MEDIAN_LIMIT,
                  max_limit: float = RECORDS_MAX_LIMIT) -> dict:
    """Re-predict every record; ``passed`` is False when the median |relative error| of
    throughput exceeds ``median_limit`` or any exceeds ``max_limit``."""
    rows = []
    for path, rec in load_records(records_dir):
        est = repredict(rec, records_dir, path)
        pred = predicted_summary(est)
        err = errors_of(pred, rec["measured"])
        rows.append({"record": path.name, "case": rec["case"]["name"], "device": rec["case"].get("device"),
                     "profile": rec["profile"]["name"],
                     "measured_throughput_tok_s": rec["measured"].get("throughput_tok_s"),
                     "predicted_throughput_tok_s": est.throughput_tok_s,
                     "recorded_predicted_throughput_tok_s": rec["predicted"].get("throughput_tok_s"),
                     "error": err["throughput_tok_s"], "errors": err, "bottleneck": est.bottleneck})
    med, mx = summarize([r["error"] for r in rows])
    passed = bool(rows) and med <= median_limit and mx <= max_limit
    return {"n": len(rows), "median_abs_error": med, "max_abs_error": mx, "median_limit": median_limit,
            "max_limit": max_limit, "passed": passed, "records": rows}
