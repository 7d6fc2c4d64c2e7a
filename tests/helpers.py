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


def without_progress(err: str) -> str:
    """stderr without the progress lines of long commands (``llmsim.common.Progress`` writes
    "llmsim plan: <stage>" lines where stderr is not a terminal): what is left is the
    command's own output, e.g. its one error line."""
    return "".join(line for line in err.splitlines(keepends=True) if not line.startswith("llmsim plan: "))


def run_json(*args: str):
    code, out, err = run_cli(*args, "--json")
    assert code == 0, err
    return json.loads(out)


# Unit roundoff u = 2^-p of each dtype (p = significand bits incl. the implicit one, minus one).
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
# A forward pass differs between two correct implementations by rounding alone. A dot product
# of length k summed in another order (another BLAS kernel, blocking or thread count) differs
# by about sqrt(k) u relative (probabilistic bound: Higham & Mary, SIAM J. Sci. Comput. 41(5),
# 2019); the residual stream adds one such error per block, so 2 L + 1 of them (attention and
# MLP of each layer, then the LM head) accumulate along the depth. The factor covers the
# amplification by the norms and softmax of random weights (tiny models in fp32: measured
# 2.8e-7 .. 6.7e-7 against bounds of 2.1e-5 .. 2.5e-5, AMD EPYC, torch 2.13) without admitting
# a real bug, which moves logits by 1e-2 or more.
ROUNDING_SAFETY = 4.0


def rounding_tolerance(spec, dtype: str = "fp32") -> float:
    """Largest relative difference (max |a - b| / max |b|) of two logits tensors computed by
    the same model in ``dtype`` with sums in different orders: the bound above."""
    import math
    k = max(spec.hidden_size, spec.ffn_dim, spec.q_dim)
    return ROUNDING_SAFETY * UNIT_ROUNDOFF[dtype] * math.sqrt(k) * (2 * spec.num_layers + 1)
