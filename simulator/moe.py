"""Mixture of experts: the formulas the cost model, the search and the executor share.

A layer's routed experts (``ModelSpec.num_experts`` E, ``experts_per_token`` k of them per
token, each a SwiGLU MLP of ``ffn_dim`` f; Mixtral, arXiv 2401.04088, section 2.1) are only
as busy as the tokens routed to them. Everything here follows from one number, the expected
count of distinct experts a batch of m tokens touches (``experts_touched``):

    E_touched(m) = E (1 - (1 - k/E)^m)

A token's top-k routing misses a given expert with probability C(E-1, k)/C(E, k) = 1 - k/E;
with tokens routed independently and uniformly, m tokens all miss it with (1 - k/E)^m, and by
linearity of expectation the touched count is E times the complement (an occupancy problem:
Feller, An Introduction to Probability Theory and Its Applications, vol. 1, chapter II). m = 1 touches k
experts; m -> infinity touches all E. Real routers are not uniform: a skewed router touches
fewer (the executor reports what it touched, ``validate.executor.moe``).

Expert parallelism (``Policy.expert_parallel``; GShard, arXiv 2006.16668, and
DeepSpeed-MoE, arXiv 2201.05596, whose expert layers dispatch and combine by all-to-all): the ``dp`` data-parallel replicas keep their own
copy of every other weight but split the routed experts, ``ceil(E / ep)`` per GPU (ep = dp).
Each MoE layer sends every token's hidden state to the GPUs of its k experts and back: two
all-to-alls (dispatch, combine) of ``m k h`` elements per GPU (``dispatch_bytes``), each
``(n - 1) alpha + (n - 1)/n S / busbw`` (pairwise exchange: Thakur, Rabenseifner and Gropp,
"Optimization of Collective Communication Operations in MPICH", IJHPCA 19(1), 2005;
nccl-tests' alltoall busbw = algbw (n - 1)/n, so the profile's busbw applies as it is).
A GPU then computes its own experts for the tokens of all ep replicas: ep m tokens route
into them (``experts_touched(model, m, ep)``, ``expert_tokens``).

Expert offloading (``Policy.expert_offload``; ``simulator.engines.llmsim``, as
``validate.executor.moe`` runs it): experts whose weights live on the CPU or the disk are

- ``prefetch``: streamed in with the rest of their layer, ahead of its compute and
  overlapped with the previous layer's (FlexGen-style placement, arXiv 2303.06865; the
  weight streaming of MoE-Lightning, arXiv 2411.11217): every offloaded byte,
  hidden behind compute;
- ``fetch``: fetched on demand: a GPU batch's router decides which experts it needs, and
  only those not already fetched for this layer and block are copied in - over a block of
  ``nb`` GPU batches of ``b x t`` tokens, ``E_touched(nb b t)`` experts' offloaded shares,
  serial with the layer's compute (the routing that names them comes just before their
  use; as in Eliseev and Mazur's Mixtral offloading, arXiv 2312.17238, without its cache).
  Fewer bytes when a block touches few experts (small decode batches), none hidden;
- ``cpu``: computed on the CPU (Fiddler, arXiv 2402.07033): the hidden states of
  the tokens routed to CPU-resident experts go to the host and come back, ``m k h``
  elements of the CPU share each way; the weights never cross the link (a disk-resident
  expert is read into host memory after the routing, serially).

Placement (``assign_layer_tensors``): a layer's tensors are placed by the weight fractions
with the midpoint rule of ``simulator.placement`` - per-expert tensors are ordinary tensors
of the list - in an order that interleaves the routed experts' tensors (expert 0's w1, w3,
w2, then expert 1's, ...) with the others (attention, norms, router, shared experts) by
their relative position (``placement_order``). A share u of the weights then holds u of each
kind up to one tensor, so the offloaded experts' bytes are ``u x routed bytes`` (and those
fetched ``u x routed bytes x E_touched / E``): affine in u, and every placement the rule
realizes exactly is one the LP can ask for.

Units: bytes, seconds, bytes/s.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from simulator.errors import PolicyError, ProfileError
from simulator.models import ModelSpec, TensorSpec
from simulator.placement import achievable_tensor_placements, assign_tensors
from simulator.parallel import group_link
from simulator.vocabulary import Tier

MOE_ENGINE = "llmsim"  # the engine whose schedule models streamed experts, CPU experts and expert parallelism


# ------------------------------------------------------------------ routing statistics
def is_routed_expert(name: str) -> bool:
    """A routed expert's tensor (``...experts.<e>....``; shared experts and the router are not)."""
    return ".experts." in name


def experts_per_rank(model: ModelSpec, ep=1):
    """Routed experts one GPU holds when ep GPUs split them: ``ceil(E / ep)`` (the busiest)."""
    return np.ceil(model.num_experts / np.asarray(ep, dtype=float))


def experts_touched(model: ModelSpec, m, ep=1):
    """Expected distinct routed experts of one GPU that ``m`` tokens per replica touch (module
    docstring): ``E_r (1 - (1 - k/E)^(m ep))`` with ``E_r = ceil(E / ep)`` experts on the GPU
    and ``m ep`` tokens routed to it from the ep replicas; ep = 1: ``E (1 - (1 - k/E)^m)``.
    m and ep may be numpy arrays. Unit: experts."""
    E, k = model.num_experts, model.experts_per_token
    m, ep = np.asarray(m, dtype=float), np.asarray(ep, dtype=float)
    return experts_per_rank(model, ep) * (1.0 - (1.0 - k / E) ** (m * ep))


# Tokens per expert: a given expert of a GPU receives n ~ Binomial(m ep, k/E) of the m ep tokens
# routed to that GPU (each token picks it with probability k/E). GEMM time is not affine in n
# at small n (memory-bound, and BLAS switches kernels between n = 1 and 4: on the 2-core
# machine a 768 x 768 fp32 expert took 417/576/673/568 us at 1/2/3/4 tokens), so the expected
# time is taken over that distribution (``token_pmf``) up to a mean of BINOMIAL_MAX_MEAN tokens;
# above it, where GEMM time is affine in n, at the mean.
BINOMIAL_MAX_MEAN = 32.0
TOKEN_GRID = np.arange(1, 97, dtype=float)  # n = 1..96: beyond 6 standard deviations of a mean of 32


def token_mean(model: ModelSpec, m, ep=1):
    """Mean tokens one expert receives (touched or not): ``m ep k / E``. Unit: tokens."""
    return np.asarray(m, dtype=float) * np.asarray(ep, dtype=float) * model.experts_per_token / model.num_experts


def token_pmf(model: ModelSpec, m, ep=1) -> np.ndarray:
    """P(an expert receives n tokens) for n in ``TOKEN_GRID``: Binomial(m ep, k/E), shape
    (..., len(TOKEN_GRID)); n = 0 (the expert untouched) is left out, so the sum over n is
    ``1 - (1 - k/E)^(m ep)`` and ``experts_per_rank x`` it is ``experts_touched``."""
    from scipy.stats import binom
    trials = np.asarray(m, dtype=float) * np.asarray(ep, dtype=float)
    return binom.pmf(TOKEN_GRID, np.round(trials)[..., None], model.experts_per_token / model.num_experts)


def expected_expert_time_s(model: ModelSpec, m, ep, time_of_tokens):
    """Expected time of one GPU's routed experts for m tokens per replica, ``time_of_tokens(n)``
    being one expert's time for n tokens (n a numpy array): ``E_r sum_n P(n) t(n)`` over
    ``token_pmf`` where the mean is at most ``BINOMIAL_MAX_MEAN``, else ``E_touched x
    t(expert_tokens)``. Unit: s."""
    m = np.asarray(m, dtype=float)
    small = token_mean(model, m, ep) <= BINOMIAL_MAX_MEAN
    at_mean = experts_touched(model, m, ep) * time_of_tokens(expert_tokens(model, m, ep))
    if not np.any(small):
        return at_mean
    exact = experts_per_rank(model, ep) * (token_pmf(model, m, ep) @ np.asarray(time_of_tokens(TOKEN_GRID)))
    return np.where(small, exact, at_mean)


def token_support(model: ModelSpec, m: int, ep: int = 1, min_prob: float = 1e-3) -> list[int]:
    """The token counts whose GEMM times ``expected_expert_time_s`` weighs for a batch of m
    tokens (what a profile must measure for it): those of ``token_pmf`` at least ``min_prob``
    likely, or, above ``BINOMIAL_MAX_MEAN``, the floor and ceiling of ``expert_tokens``."""
    if float(token_mean(model, m, ep)) > BINOMIAL_MAX_MEAN:
        t = float(expert_tokens(model, m, ep))
        return sorted({int(np.floor(t)), int(np.ceil(t))})
    pmf = token_pmf(model, m, ep)
    return [int(n) for n, p in zip(TOKEN_GRID, pmf) if p >= min_prob]


def expert_tokens(model: ModelSpec, m, ep=1):
    """Mean tokens per touched expert of one GPU: its routed (token, expert) pairs
    ``m ep k E_r / E`` over ``experts_touched``; ep = 1: ``m k / E_touched(m)``. Unit: tokens."""
    E, k = model.num_experts, model.experts_per_token
    m, ep = np.asarray(m, dtype=float), np.asarray(ep, dtype=float)
    return m * ep * k * experts_per_rank(model, ep) / E / experts_touched(model, m, ep)


# ------------------------------------------------------------------ bytes
def expert_tensors(model: ModelSpec, e: int = 0) -> tuple[TensorSpec, ...]:
    """The tensors of routed expert ``e`` in the model's typical layer."""
    marker = f".experts.{e}."
    return tuple(t for t in model.layer_tensors() if marker in t.name)


def expert_bytes(model: ModelSpec, fmt: str, tp: int = 1) -> float:
    """One routed expert's weights on one tensor-parallel rank (its matrices split tp ways,
    as ``simulator.ops.rank_bytes`` splits an MLP). Unit: bytes."""
    return sum(t.nbytes(fmt) for t in expert_tensors(model)) / tp


def routed_bytes(model: ModelSpec, fmt: str, tp: int = 1, ep=1):
    """A layer's routed experts on one GPU: ``ceil(E / ep) x expert_bytes``. Unit: bytes."""
    return experts_per_rank(model, ep) * expert_bytes(model, fmt, tp)


def ep_saving(model: ModelSpec, fmt: str, tp: int, ep):
    """Bytes of a layer's routed experts that one GPU does not hold under expert parallelism:
    ``(E - ceil(E / ep)) x expert_bytes`` (zero at ep = 1). Unit: bytes."""
    return routed_bytes(model, fmt, tp, 1) - routed_bytes(model, fmt, tp, ep)


def dispatch_bytes(model: ModelSpec, tokens, elem_bytes: int):
    """Bytes one GPU sends in one all-to-all of an expert-parallel MoE layer: every token's
    hidden state once per chosen expert, ``tokens x k x h x elem_bytes`` (the dispatch; the
    combine returns as much). Unit: bytes."""
    return np.asarray(tokens, dtype=float) * model.experts_per_token * model.hidden_size * elem_bytes


def all_to_all_time_s(nbytes, n: int, busbw_bytes_per_s: float, latency_s: float):
    """All-to-all among n GPUs, each sending ``nbytes`` in all (its own share included):
    ``(n - 1) latency + (n - 1)/n x nbytes / busbw`` (module docstring). Zero for n = 1. Unit: s."""
    nbytes = np.asarray(nbytes, dtype=float)
    n = np.asarray(n, dtype=float)
    t = (n - 1.0) * latency_s + (n - 1.0) / np.maximum(n, 1.0) * nbytes / busbw_bytes_per_s
    return np.where(n > 1, t, 0.0)


def ep_link(hw, gpus: int) -> tuple[float, float]:
    """(busbw, latency) of the link an expert-parallel group of a ``gpus``-GPU layout spans:
    the node's GPU link when it fits on one node, else the network (ProfileError naming
    the missing key)."""
    ic = hw.interconnect
    return group_link(hw.name, gpus <= max(1, hw.gpu_count), (ic.intra_node_bytes_per_s, ic.intra_node_latency_s),
                      (ic.inter_node_bytes_per_s, ic.inter_node_latency_s),
                      f"the all-to-alls of expert parallelism over {gpus} GPUs")


# ------------------------------------------------------------------ placement
def placement_order(names: Sequence[str], sizes: Sequence[float]) -> list[int]:
    """Indices of a layer's tensors in the order the placement rule walks them: the routed
    experts' tensors and the others (attention, norms, router, shared experts) merged by
    their relative position in their own list - each tensor keyed by the midpoint of its
    cumulative size over its list's total - so that every prefix of the order holds the
    same share of both lists, up to one tensor (module docstring). A dense layer keeps its
    order."""
    routed = [is_routed_expert(n) for n in names]
    keys = []
    for kind in (False, True):
        idx = [i for i, r in enumerate(routed) if r is kind]
        total = float(sum(sizes[i] for i in idx)) or 1.0
        cum = 0.0
        for i in idx:
            keys.append(((cum + sizes[i] / 2.0) / total, kind, i))
            cum += sizes[i]
    return [i for _, _, i in sorted(keys)]


def assign_layer_tensors(names: Sequence[str], sizes: Sequence[float], placement) -> list[Tier]:
    """Tier of each of a layer's tensors (in ``layer_tensors`` order) by the midpoint rule of
    ``simulator.placement.assign_tensors`` over ``placement_order``: the GPU gets a prefix of
    that order, the CPU the middle, the disk the rest - a share u of the weights holds u of
    the routed experts' bytes and u of the other tensors' (up to one tensor each)."""
    order = placement_order(names, sizes)
    tiers = assign_tensors([sizes[i] for i in order], placement)
    out: list[Tier | None] = [None] * len(names)
    for i, tier in zip(order, tiers):
        out[i] = tier
    return out


def weight_options(model: ModelSpec, fmt: str) -> list:
    """(asked, realized) weight placements of an MoE layer: every placement the midpoint rule
    realizes exactly over ``placement_order`` (asked = realized; ``Engine.weight_options``)."""
    tensors = model.layer_tensors()
    names, sizes = [t.name for t in tensors], [t.nbytes(fmt) for t in tensors]
    return [(p, p) for p in achievable_tensor_placements([sizes[i] for i in placement_order(names, sizes)])]


# ------------------------------------------------------------------ policies and the search
def check_policy(model: ModelSpec, hw, policy, engine_name: str) -> None:
    """PolicyError for expert knobs a case cannot use: on a model without experts, on an
    engine other than ``MOE_ENGINE``, expert parallelism with more replicas than experts;
    ProfileError for CPU experts on a profile that does not rate the CPU in the dtype."""
    knobs = [flag for flag, on in (("--expert-parallel", policy.expert_parallel),
                                   ("--expert-offload", policy.expert_offload != "prefetch")) if on]
    if not knobs:
        return
    if not model.is_moe:
        raise PolicyError(f"{knobs[0]}: {model.name} has no experts (num_experts {model.num_experts})")
    if engine_name != MOE_ENGINE:
        raise PolicyError(f"{knobs[0]}: the {engine_name} engine does not split or place experts on their own; "
                          f"only the {MOE_ENGINE} engine models it")
    if policy.expert_parallel and policy.dp > model.num_experts:
        raise PolicyError(f"--expert-parallel: --dp {policy.dp} replicas exceed {model.name}'s {model.num_experts} "
                          "experts (every GPU holds at least one)")
    if policy.expert_offload == "cpu":
        hw.cpu.peak_flop_per_s(policy.dtype)  # raises ProfileError naming the cpu key


NO_VARIANT = (False, "prefetch")  # (expert_parallel, expert_offload) of a model without experts


def search_variants(model: ModelSpec, hw, engine_name: str, dp: int, dtype: str) -> list[tuple[bool, str]]:
    """The (expert_parallel, expert_offload) settings the search tries for one layout and
    dtype: only ``NO_VARIANT`` unless the model has experts and the engine models them;
    expert parallelism where there are 2..E replicas; offloaded experts prefetched with
    their layer, fetched after the routing, or (where the profile rates the CPU in
    ``dtype``) computed on the CPU."""
    if not model.is_moe or engine_name != MOE_ENGINE:
        return [NO_VARIANT]
    eps = [False] + ([True] if 1 < dp <= model.num_experts else [])
    modes = ["prefetch", "fetch"] + (["cpu"] if dtype in hw.cpu.dtypes else [])
    return [(a, mode) for a in eps for mode in modes]


def variant_text(expert_parallel: bool, expert_offload: str) -> str:
    """The words for a variant in messages and tables."""
    parts = (["experts split over the replicas"] if expert_parallel else []) + \
        ([{"fetch": "offloaded experts fetched after the routing",
           "cpu": "offloaded experts computed on the CPU"}[expert_offload]] if expert_offload != "prefetch" else [])
    return ", ".join(parts)


def touched_fraction(model: ModelSpec, m, ep=1):
    """Share of a GPU's routed experts that m tokens per replica touch: E_touched / E_r."""
    return experts_touched(model, m, ep) / experts_per_rank(model, ep)

