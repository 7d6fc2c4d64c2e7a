"""Store the published runs of other engines as records (validate/records/published/), so that
``llmsim validate --records`` re-predicts them with their engine in CI.

    python scripts/import_published.py [--data ../shared/data] [--out validate/records/published]

Each record keeps the published figures as published (seconds, tokens/s; FlexGen's "GB" of
peak memory are GiB), the row and the source file with its provenance header, the engine and
its options, and the shipped profile of the machine (by name). Re-running writes the same
files (the creation stamp is the data's date). Bad input: one line, exit 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulator.errors import LlmsimError  # noqa: E402
from simulator.models import get_model  # noqa: E402
from simulator.policy import Placement, Policy, Workload  # noqa: E402
from simulator.units import GiB  # noqa: E402

CREATED = "2026-12-01T00:00:00+00:00"


def read_csv(path: Path) -> tuple[str, list[dict]]:
    text = path.read_text()
    header = " ".join(line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#"))
    rows = list(csv.DictReader(io.StringIO("".join(line + "\n" for line in text.splitlines() if not line.startswith("#")))))
    if not rows:
        raise LlmsimError(f"{path}: no rows")
    return header, rows


def placement(text: str, where: str) -> Placement:
    try:
        g, c, d = (float(x) / 100 for x in text.split("/"))
    except ValueError:
        raise LlmsimError(f"{where}: placement {text!r} is not gpu/cpu/disk percents") from None
    return Placement(g, c, d)


def record(name, source, engine, model, workload, policy, profile, measured, gates=None) -> dict:
    from simulator.cost import estimate
    from simulator.engines import get_engine
    from simulator.hardware import load_profile
    from validate.harness import RECORD_SCHEMA, errors_of, predicted_summary

    eng = get_engine(engine["name"], **engine.get("options", {}))
    est = estimate(model, load_profile(profile), workload, policy, eng)
    pred = {k: v for k, v in predicted_summary(est).items() if k != "breakdown"}
    return {"schema_version": RECORD_SCHEMA, "created": CREATED, "kind": "published", "source": source,
            "engine": engine, "case": {"name": name, "model": model.to_dict(), "workload": workload.to_dict(),
                                       "policy": policy.to_dict(), "device": "cuda"},
            "profile": {"name": profile}, "measured": measured, "predicted": pred,
            "errors": errors_of(pred, measured), "gates": gates or {}, "machine": {}, "versions": {},
            "notes": [source["caveat"]] if source.get("caveat") else []}


def flexgen_policy(r: dict, where: str, **flags) -> Policy:
    """The policy of one row of FlexGen's CSVs (``--percent`` as gpu/cpu/disk of each kind)."""
    return Policy(gpu_batch_size=int(r["gpu_batch_size"]), num_gpu_batches=int(r["num_gpu_batches"]),
                  weights=placement(r["weights_pct"], where), cache=placement(r["cache_pct"], where),
                  activations=placement(r["activations_pct"], where), cpu_attention=r["cpu_attention"] == "1",
                  compress_weights=r["compress_weights"] == "1", **flags)


def flexgen_h100(data: Path) -> list[dict]:
    path = data / "flexgen_h100_2026-11-25.csv"
    header, rows = read_csv(path)
    out = []
    for i, r in enumerate(rows, 1):
        where = f"{path.name} row {i}"
        cached = float(r["weights_pct"].split("/")[2]) > 0 or float(r["cache_pct"].split("/")[2]) > 0
        pol = flexgen_policy(r, where, disk_io="cached" if cached else "direct")
        n = pol.block_size
        measured = {"prefill_latency_s": float(r["prefill_s"]), "decode_latency_s": float(r["decode_s"]),
                    "total_latency_s": float(r["prefill_s"]) + float(r["decode_s"]),
                    "throughput_tok_s": float(r["total_tok_s"]), "decode_throughput_tok_s": float(r["decode_tok_s"]),
                    "peak_memory_bytes": {"gpu": float(r["peak_gpu_GB"]) * GiB}}
        name = (f"flexgen/h100/{r['model']}/{n} seqs {r['gpu_batch_size']}x{r['num_gpu_batches']}"
                f"/w{r['weights_pct']}{'/4-bit' if pol.compress_weights else ''}")
        src = {"file": f"shared/data/{path.name}", "row": i, "provenance": header,
               "caveat": "the disk tier's files were in the page cache" if cached else ""}
        out.append(record(name, src, {"name": "flexgen", "options": {}}, get_model(r["model"]), Workload(512, 32),
                          pol, "h100-pcie5", measured,
                          {"prefill_latency_s": 0.20, "decode_latency_s": 0.20, "peak_gpu_bytes": 0.05}))
    return out


def flexgen_t4(data: Path) -> list[dict]:
    path = data / "flexgen_t4_prompt256.csv"
    header, rows = read_csv(path)
    out = []
    for i, r in enumerate(rows, 1):
        where = f"{path.name} row {i}"
        fewer = r["model"] in ("opt-30b", "opt-175b")  # the header: these used --debug fewer_batch
        pol = flexgen_policy(r, where, compress_cache=r["compress_cache"] == "1", overlap=r["overlap"] == "1")
        options = {"pin_weights": r["pin_weights"] == "1", "decode_timing": "fewer_batch" if fewer else "full"}
        name = (f"flexgen/t4/{r['model']}/{r['gpu_batch_size']}x{r['num_gpu_batches']}/w{r['weights_pct']}"
                f"/c{r['cache_pct']}")
        src = {"file": f"shared/data/{path.name}", "row": i, "provenance": header,
               "caveat": "decode extrapolated by FlexGen's --debug fewer_batch" if fewer else ""}
        measured = {"throughput_tok_s": float(r["measured_tok_s"])}
        out.append(record(name, src, {"name": "flexgen", "options": options}, get_model(r["model"]),
                          Workload(int(r["prompt_len"]), int(r["gen_len"])), pol, "t4-gcp", measured))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--out", default=str(ROOT / "validate" / "records" / "published"))
    a = p.parse_args(argv)
    from simulator.files import atomic_write
    from validate.harness import record_id
    try:
        data = Path(a.data)
        if not data.is_dir():
            raise LlmsimError(f"--data {a.data}: no such directory")
        for sub, recs in (("flexgen-h100", flexgen_h100(data)), ("flexgen-t4", flexgen_t4(data))):
            d = Path(a.out) / sub
            d.mkdir(parents=True, exist_ok=True)
            for rec in recs:
                atomic_write(d / f"{record_id(rec)}.json", json.dumps(rec, indent=2) + "\n")
            print(f"{d}: {len(recs)} records")
    except (LlmsimError, OSError) as e:
        sys.stderr.write(f"import_published: error: {' '.join(str(e).split())}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
