"""Store the published multi-GPU runs of ``shared/data/layouts/`` as records
(validate/records/published/layouts/), re-predicted with their engine in CI by
``llmsim validate --records validate/records`` and gated on the median |error| of the latency
each states (``validate.harness.LATENCY_CLASS``).

    python scripts/import_layouts.py [--data ../shared/data] [--out validate/records/published/layouts]

Rows and their engines (``simulator/engines/static.py``) and machines (shipped profiles):

- ``fastertransformer_gpt_guide.csv``: FasterTransformer GPT 350M..530B at TP 1-32 and TP8 x PP3
  on ``a100-superpod``; measured: the whole request's latency (``total_latency_s``).
- ``bloom176b_ds_inference_a100.csv``: DeepSpeed-Inference TP8 fp16 on ``a100-80g-8x-bloom``;
  its "ms per generated token amortized over the batch" x batch x 100 tokens is the wall time
  of the request (``total_latency_s``); the prompts are the script's 8 sentences, padded to
  the longest (~10 tokens: an estimate; the prefill is a small part of 100 decode steps).
- ``tensorrt_llm_perf_v0.5_v0.6.csv``: TensorRT-LLM v0.5 first-token latency at batch 1, fp16
  on A100 (``prefill_latency_s``) on ``a100-superpod``'s nodes (the page does not state the
  A100 variant: the 80GB SXM is assumed).

Every other row is listed in ``skipped.csv`` with its reason (no latency; an engine, a dtype
or a machine not modelled; the rows an engine constant is derived from). Model shapes:
``models.yaml`` beside the records (from ``model_shapes.csv`` and the configs it names).

Each engine's ``layer_fixed_s`` is derived here from one of its own measurements, printed,
and must equal the engine's shipped constant (else exit 2: the constant and its derivation
drifted apart). Re-running writes the same files. Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from simulator.errors import LlmsimError  # noqa: E402
from simulator.models import ModelSpec, get_model  # noqa: E402
from simulator.policy import Policy, Workload  # noqa: E402

DATA_FILES = ("fastertransformer_gpt_guide.csv", "bloom176b_ds_inference_a100.csv", "tensorrt_llm_perf_v0.5_v0.6.csv")
BLOOM_PROMPT_TOKENS = 10  # the longest of the script's 8 prompts in BLOOM's tokenizer, padded (an estimate)
BLOOM_NEW_TOKENS = 100  # max_new_tokens=100 (the script at HEAD; the CSV's note)
PROFILES = {"fastertransformer": "a100-superpod", "deepspeed-inference": "a100-80g-8x-bloom",
            "tensorrt-llm": "a100-superpod"}
# The measurement each engine's layer_fixed_s is derived from (engine: (file, row numbers)).
DERIVATION_ROWS = {"fastertransformer": ("fastertransformer_gpt_guide.csv", ("GPT-350M", 1, (128, 8), (512, 32))),
                   "deepspeed-inference": ("bloom176b_ds_inference_a100.csv", ("BLOOM 176B", 1)),
                   "tensorrt-llm": ("tensorrt_llm_perf_v0.5_v0.6.csv", ("GPT-J 6B", 1, 128))}


def read_csv(path: Path) -> tuple[str, list[dict]]:
    text = path.read_text()
    header = " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))
    rows = list(csv.DictReader(io.StringIO("".join(line + "\n" for line in text.splitlines()
                                                   if line.strip() and not line.startswith("#")))))
    if not rows:
        raise LlmsimError(f"{path}: no rows")
    return header, rows


def load_models(path: Path) -> dict[str, ModelSpec]:
    import yaml
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise LlmsimError(f"{path}: cannot read: {e}") from None
    return {k: get_model(v) if isinstance(v, str) else ModelSpec.from_dict(v, f"{path}: {k}") for k, v in doc.items()}


def number(r: dict, key: str) -> float | None:
    v = (r.get(key) or "").strip()
    try:
        x = float(v)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------ which rows, as what
def case_of(file: str, r: dict, models: dict):
    """(engine, model, workload, policy, measured, metric, notes) of a row, or the reason it is
    skipped (a string)."""
    ms = number(r, "latency_ms")
    eng_text = r["engine"]
    if file.startswith("fastertransformer"):
        if eng_text != "FasterTransformer":
            return "the FT guide's baseline column is Megatron-LM's own PyTorch inference: an engine not modelled"
        if ms is None:
            return "no latency (the source says OOM)"
        b, s, n = int(r["batch"]), int(r["input_len"]), int(r["output_len"])
        pol = Policy(gpu_batch_size=b, tp=int(r["tp"]), pp=int(r["pp"]), dtype="fp16")
        total = ms / 1e3
        measured = {"total_latency_s": total, "throughput_tok_s": b * n / total}
        notes = ["throughput derived: batch x output tokens / the request's latency",
                 "top_p=0.9 sampling (the guide); one GPU batch through the pipeline (no micro-batches)"]
        return "fastertransformer", models[r["model"]], Workload(s, n), pol, measured, "total_latency_s", notes
    if file.startswith("bloom"):
        if eng_text == "HF Accelerate":
            return ("HF Accelerate's naive pipeline over the node's GPUs (device_map): the accelerate engine models "
                    "one GPU offloading to CPU/disk, not a multi-GPU device_map")
        if eng_text.startswith("DeepSpeed ZeRO"):
            return ("ZeRO-Inference sharding the weights over 8 GPUs, gathered per layer: the zero-inference engine "
                    "models one GPU streaming from CPU/NVMe")
        if r["dtype"] == "int8":
            return "int8 weights: not modelled (policies hold fp16/bf16/fp32 or group-wise 4-bit weights)"
        if ms is None:
            return "no latency (the source says OOM)"
        b = int(r["batch"])
        total = ms * b * BLOOM_NEW_TOKENS / 1e3
        pol = Policy(gpu_batch_size=b, tp=int(float(r["tp"])), dtype="fp16")
        measured = {"total_latency_s": total, "throughput_tok_s": 1e3 / ms}
        notes = [f"total latency derived: {ms} ms per token x batch {b} x {BLOOM_NEW_TOKENS} tokens (the source's "
                 "amortized figure, tokenization included)",
                 f"prompt: the script's short sentences padded to ~{BLOOM_PROMPT_TOKENS} tokens (an estimate)"]
        return ("deepspeed-inference", models[r["model"]], Workload(BLOOM_PROMPT_TOKENS, BLOOM_NEW_TOKENS), pol,
                measured, "total_latency_s", notes)
    # TensorRT-LLM
    if ms is None:
        return "throughput only: no latency value" + (" (and its unit is ambiguous)"
                                                      if r["verified"] == "ambiguous-unit" else "")
    if r["dtype"] != "fp16":
        return f"{r['dtype']} compute: not modelled (policy dtypes fp16, bf16, fp32)"
    m, s = models[r["model"]], int(r["input_len"])
    if s + 1 > m.max_position_embeddings:
        return (f"{s} prompt tokens + 1 generated exceed {m.name}'s {m.max_position_embeddings} positions as llmsim "
                "counts a context (prompt + generated)")
    pol = Policy(gpu_batch_size=int(r["batch"]), tp=int(r["tp"]), pp=int(r["pp"]), dtype="fp16")
    measured = {"prefill_latency_s": ms / 1e3}
    notes = ["first-token latency at batch 1 (the page's 'Low Latency' table)",
             "A100 variant not stated by the page: the 80GB SXM of a100-superpod is assumed"]
    return "tensorrt-llm", m, Workload(s, 1), pol, measured, "prefill_latency_s", notes


def is_derivation_row(engine: str, file: str, r: dict) -> bool:
    f, key = DERIVATION_ROWS[engine]
    if f != file or r["model"] != key[0] or int(float(r["batch"])) != key[1]:
        return False
    if engine == "fastertransformer":
        return (int(r["input_len"]), int(r["output_len"])) in key[2:] and r["engine"] == "FasterTransformer"
    if engine == "deepspeed-inference":
        return r["engine"] == "DeepSpeed-Inference" and r["dtype"] == "fp16"
    return int(r["input_len"]) == key[2] and r["dtype"] == "fp16" and r["phase"] == "prefill"


# ------------------------------------------------------------------ engine constants
def derive_layer_fixed(engine: str, cases: list) -> float:
    """The engine's fixed time per layer forward from its derivation rows: the measured time
    beyond what the engine predicts without it, per layer and forward (one forward per output
    token). FasterTransformer: the difference of its GPT-350M batch-1 rows (512+32 vs 128+8),
    so that what a request pays once cancels: ``[(T2 - T1) - (P2 - P1)] / (L (n2 - n1))``;
    DeepSpeed-Inference: BLOOM-176B at batch 1, ``(T - P) / (L n)``; TensorRT-LLM: GPT-J 6B's
    128-token first token at batch 1, ``(T - P) / L``. Unit: s."""
    from simulator.cost import estimate
    from simulator.engines import get_engine
    from simulator.hardware import load_profile
    eng = get_engine(engine, layer_fixed_s=0.0)
    hw = load_profile(PROFILES[engine])
    got = []
    for _, model, wl, pol, measured, metric, _ in cases:
        est = estimate(model, hw, wl, pol, eng)
        got.append((getattr(est, metric), measured[metric], model.num_layers, wl.gen_len))
    if engine == "fastertransformer":
        (p1, t1, L, n1), (p2, t2, _, n2) = sorted(got, key=lambda g: g[3])
        return ((t2 - t1) - (p2 - p1)) / (L * (n2 - n1))
    (p, t, L, n), = got
    return (t - p) / (L * n)


# ------------------------------------------------------------------ records
def record_of(file: str, i: int, header: str, case) -> dict:
    from import_published import record
    engine, model, wl, pol, measured, metric, notes = case
    tag = (f"{Path(file).stem}/{model.name}/tp{pol.tp}" + (f"xpp{pol.pp}" if pol.pp > 1 else "")
           + f"/b{pol.gpu_batch_size}/{wl.prompt_len}+{wl.gen_len}")
    src = {"file": f"shared/data/layouts/{file}", "row": i, "provenance": header, "caveat": ""}
    rec = record(tag, src, {"name": engine, "options": {}}, model, wl, pol, PROFILES[engine], measured)
    rec["class"] = "published-latency"
    rec["metric"] = metric
    rec["notes"] = notes
    return rec


def collect(data: Path, models: dict):
    """(records by engine, skipped rows, derivation cases by engine)."""
    records, skipped, derive = {}, [], {}
    for file in DATA_FILES:
        path = data / "layouts" / file
        if not path.is_file():
            raise LlmsimError(f"--data {data}: no layouts/{file}")
        header, rows = read_csv(path)
        for i, r in enumerate(rows, 1):
            case = case_of(file, r, models)
            if isinstance(case, str):
                skipped.append({"file": file, "row": i, "model": r["model"], "engine": r["engine"], "reason": case})
                continue
            engine = case[0]
            if is_derivation_row(engine, file, r):
                derive.setdefault(engine, []).append(case)
                skipped.append({"file": file, "row": i, "model": r["model"], "engine": r["engine"],
                                "reason": f"the measurement {engine}'s layer_fixed_s is derived from"})
                continue
            records.setdefault(engine, []).append((file, i, header, case))
    return records, skipped, derive


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "validate" / "records" / "published" / "layouts"))
    a = p.parse_args(argv)
    from simulator.engines import get_engine
    from validate.harness import record_id
    try:
        data, out = Path(a.data), Path(a.out)
        if not data.is_dir():
            raise LlmsimError(f"--data {a.data}: no such directory")
        models = load_models(out / "models.yaml")
        records, skipped, derive = collect(data, models)
        for engine, cases in sorted(derive.items()):
            value = derive_layer_fixed(engine, cases)
            shipped = get_engine(engine).layer_fixed.value
            print(f"{engine}: layer_fixed_s derived {value * 1e6:.1f} us (shipped {shipped * 1e6:.1f} us)")
            if abs(value - shipped) > 0.5e-6:
                raise LlmsimError(f"{engine}: layer_fixed_s {shipped:g} s differs from its derivation {value:g} s "
                                  "(simulator/engines/static.py)")
        for engine, rows in sorted(records.items()):
            d = out / engine
            d.mkdir(parents=True, exist_ok=True)
            for old in d.glob("*.json"):
                old.unlink()
            for file, i, header, case in rows:
                rec = record_of(file, i, header, case)
                _write(d / f"{record_id(rec)}.json", json.dumps(rec, indent=2) + "\n")
            print(f"{d}: {len(rows)} records")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["file", "row", "model", "engine", "reason"], lineterminator="\n")
        w.writeheader()
        w.writerows(skipped)
        _write(out / "skipped.csv", buf.getvalue())
        print(f"{out / 'skipped.csv'}: {len(skipped)} rows skipped")
    except (LlmsimError, OSError) as e:
        sys.stderr.write(f"import_layouts: error: {' '.join(str(e).split())}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
