"""Write the two request traces shipped in simulator/serving/traces/ (seeded, reproducible).

    python scripts/make_traces.py        # rewrites chat.csv and summarization.csv

Both are synthetic, made by this project: Poisson arrivals and lognormal lengths whose
parameters the project chose to give two contrasting mixes. They are not fitted to, nor
sampled from, any dataset.

- chat: short prompts and longer answers. Every prompt opens with the same 64-token system
  prompt (prefix group 0, for prefix caching) followed by a question of lognormal length,
  median 120 tokens, sigma 0.9; answers lognormal, median 180 tokens, sigma 0.7. 2 requests/s.
- summarization: long documents, short summaries. Prompts lognormal, median 1800 tokens,
  sigma 0.45; summaries lognormal, median 160 tokens, sigma 0.35; no shared prefix.
  0.5 requests/s.
Lengths are clipped so that prompt + output <= 4096 (the context of Llama-2).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "simulator" / "serving" / "traces"
N = 500
MAX_CONTEXT = 4096


def _lognormal(rng, median, sigma, n):
    return np.maximum(1, np.rint(rng.lognormal(np.log(median), sigma, n))).astype(int)


def make(name: str, seed: int, rate_rps: float, prompt, output, prefix_tokens: int) -> Path:
    rng = np.random.default_rng(seed)
    arrival = np.concatenate([[0.0], np.cumsum(rng.exponential(1.0 / rate_rps, N - 1))])
    p = prefix_tokens + _lognormal(rng, *prompt, N)
    o = _lognormal(rng, *output, N)
    p = np.minimum(p, MAX_CONTEXT // 2 + MAX_CONTEXT // 4)
    o = np.minimum(o, MAX_CONTEXT - p)
    lines = [f"# {name}: synthetic trace made by llmsim's scripts/make_traces.py (seed {seed}, {N} requests,",
             f"# Poisson {rate_rps:g} requests/s; prompt lognormal median {prompt[0]} sigma {prompt[1]}"
             + (f" after a {prefix_tokens}-token shared system prompt" if prefix_tokens else "")
             + f"; output lognormal median {output[0]} sigma {output[1]}). Not sampled from any dataset.",
             "arrival_s,prompt_tokens,output_tokens,prefix_tokens,prefix_group"]
    for t, pi, oi in zip(arrival, p, o):
        lines.append(f"{t:.4f},{pi},{oi},{prefix_tokens},{0 if prefix_tokens else -1}")
    path = OUT / f"{name}.csv"
    fd, tmp = tempfile.mkstemp(dir=OUT, prefix=f".{name}.", suffix=".csv")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for path in (make("chat", 11, 2.0, (120, 0.9), (180, 0.7), 64),
                 make("summarization", 12, 0.5, (1800, 0.45), (160, 0.35), 0)):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
