"""Tensor-, pipeline- and data-parallel generation with torch.distributed (issue 6, section 4).

    from validate.executor.distributed import run_parallel
    out = run_parallel(model, workload, policy.with_(tp=2, pp=2))   # JSON-ready dict

or one process per rank under torchrun (the same result as JSON on rank 0's stdout)::

    torchrun --standalone --nproc-per-node 4 -m validate.executor.distributed --model opt-1.3b \\
        --prompt-len 64 --gen-len 16 --gpu-batch-size 4 --num-gpu-batches 2 --tp 2 --pp 2 --json

Ranks
-----
``tp x pp x dp`` processes; rank ``(replica x pp + stage) x tp + tp_rank`` (the ranks of a
tensor-parallel group are adjacent, then stages, then replicas). Replica ``d`` generates
sequences ``[d N/dp, (d+1) N/dp)`` in blocks of ``gpu_batch_size x num_gpu_batches``, one
block after another, as the single-device executor does. Backend gloo on a CPU device,
nccl on CUDA with one GPU per rank (``cuda:<local rank>``). ``run_parallel`` starts the
ranks with ``torch.multiprocessing`` (start method ``forkserver`` where the platform has
it: the server imports torch once, so a launch costs ~0.1 s instead of one torch import
per rank; ``spawn`` otherwise or when asked), rendezvous through a ``file://`` store in a
private temporary directory (no port to race for), and stops every rank on success, on a
rank's error and on Ctrl-C or SIGTERM.

With ``tp = pp = 1`` every replica runs the single-device executor (``engine.Executor``)
on its sequences, so data-parallel runs keep offloading, compression and overlap. With
``tp`` or ``pp`` above 1 ranks run the schedule below with everything on the GPU tier;
a policy that offloads or compresses is refused before any process starts.

Tensor parallelism (Megatron-LM, arXiv 1909.08053, section 3; as ``simulator.cost``'s
``layer_gemm_splits`` and ``kv_share`` assume)
-------------------------------------------------------------------------------------
Every rank builds its shard from the full tensors of ``validate.executor.weights`` (the
same seeded tensors, or the same checkpoint, as a single-device run), then slices:

- q/k/v, fc1, gate, up: column-parallel - a rank keeps the output rows (and bias
  entries) of its ``nh/tp`` query heads, of its key/value heads, of its share of the MLP
  width (``ffn_dim`` cut into ``tp`` contiguous pieces, the first ``ffn_dim % tp`` one
  wider).
- key/value heads: ``nkv/tp`` per rank; when ``tp > nkv`` the single head a rank's query
  heads share, each head replicated ``tp/nkv`` times (``ceil(nkv/tp)`` heads per rank,
  ``simulator.ops.kv_share``). One of ``nkv`` and ``tp`` must divide the other.
- out/o_proj, fc2, down: row-parallel - a rank keeps its input columns; the partial
  products are summed by an all-reduce of the (b, t, h) hidden states, and the bias is
  added once, after it (``layers.row_parallel_sum``): two all-reduces per layer.
- norms: replicated.
- Mixtral experts (``validate.executor.moe``): every expert split like the dense MLP (w1, w3
  column-parallel, w2 row-parallel); the router replicated, so every rank routes alike; the
  experts' partial outputs are summed by the MLP's all-reduce.
- embedding: vocab-parallel. Rank ``t`` holds vocabulary rows ``[V_t, V_t+1)`` (and, for
  OPT, learned-position rows ``[P_t, P_t+1)``), looks up the ids in its range, zeros the
  others, and one all-reduce of (b, t, h) sums the ranks' parts (exact: each element has
  at most one token and one position row).
- LM head: vocab-parallel, on the rank's rows: logits (b, V/tp); the next token by the
  local maximum and one all_gather of the (value, global index) pairs, (b, 2) in fp64;
  the first maximum in vocabulary order wins, as in ``torch.argmax``. The full logits are
  gathered only when ``return_logits`` asks (that gather is not timed).

Pipeline parallelism: the schedule
----------------------------------
Stage ``s`` holds layers ``[lo_s, hi_s)``: ``L`` cut into ``pp`` contiguous ranges, the
first ``L % pp`` stages one layer longer (``ceil(L/pp)`` on the busiest, as
``simulator.parallel.rank_view``). Stage 0 also holds the embedding, the last stage the final norm and
the LM head; each stage keeps the K/V of its layers for the block's ``num_gpu_batches``
micro-batches (the policy's GPU batches, ``gpu_batch_size`` sequences each) on its device.

Every rank of a replica visits the *items* in the same order::

    for block:  for step in (prefill, decode 1 .. gen_len - 1):  for micro-batch k:
        stage 0:      ids = the prompt (prefill) or k's token of the previous step,
                      received from the last stage; embedding
        other stages: receive k's hidden states (b, t, h) from stage s - 1
        every stage:  its layers, reading and extending k's K/V
        not last:     send the hidden states (b, t, h) to stage s + 1
        last stage:   final norm and LM head on the last position -> k's next tokens (b,);
                      send them to stage 0 unless this was the block's last step

Sends are asynchronous (``isend``, completed at the end of the run) and each stage posts
the receive of item ``i + 1`` before it computes item ``i``, so a stage computes while the
previous item travels. There is no barrier between steps or blocks: micro-batch ``k``'s
next step enters stage 0 as soon as its token is back. The pipeline fills once (the first
block's prefill: ``(nb + pp - 1)`` micro-batch passes of a stage, GPipe's bubble) and stays
full through the decode steps when ``nb >= pp``; with ``nb < pp`` a token needs ``pp``
stage passes to come back and each decode step takes ``max(nb, pp)`` micro-batch passes -
the ``(nb + pp - 1) / nb`` and ``max(nb, pp) / nb`` of ``simulator.engines.common.pipeline_mult``. Hidden states
and tokens travel on separate two-rank groups (one per direction and stage pair), so a
send never queues behind a receive of the other direction (NCCL serialises the operations
of one communicator).

Timing
------
Every rank times its own work (``lanes.Timers``; perf_counter on a CPU device, where the
work is synchronous, CUDA events on the compute stream on a GPU): ``matmul``,
``attention``, ``elementwise`` (resource ``gpu``), ``communication`` (``collective``: the
tensor-parallel all-reduces and the head's all_gather) and ``pipeline_send`` (``p2p``:
posting sends, and the time the rank is blocked on a receive or, at the end, on its sends
- waiting for the upstream stage included, i.e. the bubble; the wire time alone is not
observable with gloo). Step times come from each replica's *output rank* (the last stage's
tensor-parallel rank 0): a step ends when its last micro-batch's tokens exist (CUDA: after
a synchronize); the clock starts after a barrier of every rank once the weights are in
place; ``prefill_s`` and ``decode_step_s`` are sums over blocks, of the slowest replica.
``component_s``/``breakdown`` are the *busiest rank*'s (largest time in the components
other than ``pipeline_send``); ``ranks`` lists every rank's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import multiprocessing
import os
import pickle
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F

from simulator.errors import LlmsimError, ModelError, PolicyError
from simulator.models import ModelSpec, get_model
from simulator.parallel import Layout
from simulator.policy import Policy, Workload
from simulator.vocabulary import Component, Phase, Resource, Tier
from validate.executor import layers
from validate.executor.engine import DTYPES, Executor, resolve_device
from validate.executor.errors import ExecutorError, OffloadSpaceError, UnsupportedModelError
from validate.executor.lanes import Timers
from validate.executor.plan import check_experts, make_plan
from validate.executor.storage import sigterm_as_exit
from validate.executor.weights import layer_prefix, weight_source

C, R = Component, Resource
MM, EW = C.MATMUL, C.ELEMENTWISE
PROMPT_SEED_OFFSET = 7919  # the single-device executor's default prompts: seed + 7919
STOP_GRACE_S = 2.0  # a stopped rank gets this long after SIGTERM before SIGKILL
TAG_SPAN = 1 << 30  # point-to-point tags: item index modulo this


class ParallelRunError(ExecutorError):
    """A rank of a parallel run failed; the message names the rank and its error."""


# ---------------------------------------------------------------------------- layout (no torch work)
def split_range(n: int, parts: int, i: int) -> tuple[int, int]:
    """Piece i of n items cut into ``parts`` contiguous pieces, the first ``n % parts`` one longer."""
    q, r = divmod(n, parts)
    lo = i * q + min(i, r)
    return lo, lo + q + (1 if i < r else 0)


@dataclass(frozen=True)
class ParallelLayout(Layout):
    """The planner's layout (``simulator.parallel.Layout``: tp x pp GPUs per replica, dp
    replicas, ``gpus`` ranks in all) with the executor's rank order; see the module
    docstring."""

    def rank(self, replica: int, stage: int, tp_rank: int) -> int:
        return (replica * self.pp + stage) * self.tp + tp_rank

    def place(self, rank: int) -> tuple[int, int, int]:
        """rank -> (replica, stage, tp_rank)."""
        rs, t = divmod(rank, self.tp)
        d, s = divmod(rs, self.pp)
        return d, s, t

    def stage_layers(self, num_layers: int, stage: int) -> tuple[int, int]:
        """Layers [lo, hi) of a stage: contiguous, ceil(L/pp) on the first L % pp stages."""
        return split_range(num_layers, self.pp, stage)


_COLUMN = {"self_attn.q_proj": "heads", "self_attn.k_proj": "kv", "self_attn.v_proj": "kv", "fc1": "ffn",
           "mlp.gate_proj": "ffn", "mlp.up_proj": "ffn"}
_ROW = {"self_attn.out_proj": "heads", "self_attn.o_proj": "heads", "fc2": "ffn", "mlp.down_proj": "ffn"}


@dataclass(frozen=True)
class TensorShard:
    """What tensor-parallel rank ``tp_rank`` of ``tp`` holds of every layer.

    ``spec`` is the rank's view of the model for ``layers`` (its query and key/value
    heads, its MLP width); ``features`` the [lo, hi) output features of its column pieces
    (= input features of its row pieces) per kind: heads (of q_dim), kv (of kv_dim), ffn.
    """

    spec: ModelSpec
    tp: int
    tp_rank: int
    features: dict

    def slice(self, name: str, full: torch.Tensor) -> torch.Tensor:
        """This rank's piece of the layer tensor ``name`` (without the layer prefix)."""
        module, _, kind = name.rpartition(".")
        if ".experts." in module:  # Mixtral experts: split like the dense MLP (w1, w3 column; w2 row)
            module = {"w1": "mlp.gate_proj", "w3": "mlp.up_proj", "w2": "mlp.down_proj"}[module.rpartition(".")[2]]
        elif module == "block_sparse_moe.gate":
            return full  # the router: replicated (every rank routes the same tokens alike)
        if module in _COLUMN:
            lo, hi = self.features[_COLUMN[module]]
            return full[lo:hi]  # weight (out, in): output rows; bias (out,)
        if module in _ROW:
            if kind == "bias":
                return full  # replicated, added once after the all-reduce
            lo, hi = self.features[_ROW[module]]
            return full[:, lo:hi]  # weight (out, in): input columns
        if full.dim() == 1:
            return full  # norms
        raise UnsupportedModelError(f"model {self.spec.name}: no tensor-parallel split for layer tensor {name!r}")


def tensor_shard(spec: ModelSpec, tp: int, tp_rank: int) -> TensorShard:
    nh, nkv, d = spec.num_heads, spec.num_kv_heads, spec.head_dim
    nh_l = nh // tp
    h0 = tp_rank * nh_l
    group = nh // nkv
    kv0, kv1 = h0 // group, (h0 + nh_l - 1) // group + 1  # the kv heads its query heads read
    f0, f1 = split_range(spec.ffn_dim, tp, tp_rank)
    local = spec.with_(num_heads=nh_l, num_kv_heads=kv1 - kv0, head_dim=d, ffn_dim=f1 - f0)
    return TensorShard(local, tp, tp_rank, {"heads": (h0 * d, (h0 + nh_l) * d), "kv": (kv0 * d, kv1 * d),
                                            "ffn": (f0, f1)})


def check_parallel(model: ModelSpec, workload: Workload, policy: Policy, device: str = "cpu",
                   nprocs: int | None = None, offload_dir: str | None = None,
                   ranks_here: int | None = None) -> ParallelLayout:
    """Every refusal of a parallel run, raised before any process starts (one-line typed errors).

    ``ranks_here``: ranks on this machine, one GPU each (default: all of them)."""
    check_experts(model, policy)
    lay = ParallelLayout(policy.tp, policy.pp, policy.dp)
    n = policy.num_sequences(workload)
    ctx = workload.prompt_len + workload.gen_len
    if ctx > model.max_position_embeddings:
        raise PolicyError(f"--prompt-len + --gen-len = {ctx} exceeds {model.name}'s max_position_embeddings "
                          f"{model.max_position_embeddings}")
    if nprocs is not None and nprocs != lay.gpus:
        raise PolicyError(f"nprocs {nprocs} does not match --tp {lay.tp} x --pp {lay.pp} x --dp {lay.dp} = "
                          f"{lay.gpus} ranks")
    tp, pp = lay.tp, lay.pp
    if model.num_heads % tp:
        raise PolicyError(f"--tp {tp} does not divide {model.name}'s {model.num_heads} attention heads")
    nkv = model.num_kv_heads
    if nkv % tp and tp % nkv:
        raise PolicyError(f"--tp {tp}: {model.name}'s {nkv} key/value heads can be neither split {tp} ways nor "
                          f"replicated evenly (one of {nkv} and {tp} must divide the other)")
    for what, size in (("ffn_dim", model.ffn_dim), ("vocab_size", model.vocab_size)):
        if size < tp:
            raise PolicyError(f"--tp {tp} exceeds {model.name}'s {what} {size}")
    if pp > model.num_layers:
        raise PolicyError(f"--pp {pp} exceeds {model.name}'s {model.num_layers} layers")
    if tp * pp > 1:
        for flag in ("weights", "cache", "activations"):
            p = getattr(policy, flag)
            if p.gpu_frac < 1.0 - 1e-9:
                raise PolicyError(f"--{flag} {p.to_percent_text()}: tensor/pipeline-parallel runs (--tp {tp} "
                                  f"--pp {pp}) keep everything on the GPU tier; offloading needs --tp 1 --pp 1")
        for flag in ("compress_weights", "compress_cache"):
            if getattr(policy, flag):
                raise PolicyError(f"--{flag.replace('_', '-')}: not implemented in tensor/pipeline-parallel runs "
                                  f"(--tp {tp} --pp {pp})")
    else:
        plan = make_plan(model, Workload(workload.prompt_len, workload.gen_len, n // lay.dp), policy.with_(dp=1))
        need = sum(plan.disk_bytes().values()) * lay.dp
        if need:
            parent = offload_dir or tempfile.gettempdir()
            if not os.path.isdir(parent):
                raise ExecutorError(f"offload dir {parent}: not a directory")
            free = shutil.disk_usage(parent).free
            if need > free:
                raise OffloadSpaceError(f"offload dir {parent}: {lay.dp} replicas put {need} bytes on disk but "
                                        f"only {free} bytes are free")
    dev = resolve_device(device)
    if not dist.is_available():
        raise ExecutorError("torch.distributed is not available in this torch build "
                            f"({torch.__version__}); parallel runs need it")
    if dev.type == "cuda":
        count, here = torch.cuda.device_count(), ranks_here or lay.gpus
        if here > count:
            raise ExecutorError(f"--device {device}: {here} ranks need {here} GPUs (one per rank), "
                                f"this machine has {count}")
        if not dist.is_nccl_available():
            raise ExecutorError(f"--device {device}: this torch build has no NCCL backend")
    elif not dist.is_gloo_available():
        raise ExecutorError(f"--device {device}: this torch build has no gloo backend")
    return lay


def default_prompts(model: ModelSpec, num_sequences: int, prompt_len: int, seed: int) -> torch.Tensor:
    """The single-device executor's default prompt ids (num_sequences, prompt_len) for ``seed``
    (``Executor._prompts``; the tests compare default-prompt runs of both)."""
    g = torch.Generator().manual_seed(seed + PROMPT_SEED_OFFSET)
    return torch.randint(0, model.vocab_size, (num_sequences, prompt_len), generator=g)


def _check_prompts(prompt_ids, model: ModelSpec, n: int, s: int) -> torch.Tensor:
    p = torch.as_tensor(prompt_ids, dtype=torch.long)
    if tuple(p.shape) != (n, s):
        raise PolicyError(f"prompt_ids: expected shape ({n}, {s}) (num_sequences, prompt_len), got {tuple(p.shape)}")
    if p.min() < 0 or p.max() >= model.vocab_size:
        raise PolicyError(f"prompt_ids: ids must lie in 0..{model.vocab_size - 1}")
    return p


@dataclass(frozen=True)
class Job:
    """Everything a rank needs (pickled to the ranks)."""

    model: ModelSpec
    workload: Workload
    policy: Policy
    device_type: str
    seed: int
    checkpoint: str | None
    prompts: torch.Tensor  # (N, prompt_len) int64, every replica's
    return_logits: bool
    offload_dir: str | None
    threads: int
    timeout_s: float


def make_job(model, workload, policy, device="cpu", seed=0, checkpoint=None, prompt_ids=None, return_logits=False,
             nprocs=None, offload_dir=None, threads_per_rank=None, timeout_s=600.0,
             ranks_here=None) -> tuple[Job, ParallelLayout]:
    """Check the case (``check_parallel``) and pin down what every rank runs (prompts included)."""
    lay = check_parallel(model, workload, policy, device, nprocs, offload_dir, ranks_here)
    n, s = policy.num_sequences(workload), workload.prompt_len
    prompts = default_prompts(model, n, s, seed) if prompt_ids is None else _check_prompts(prompt_ids, model, n, s)
    threads = threads_per_rank or max(1, (os.cpu_count() or 1) // lay.gpus)
    job = Job(model, workload, policy, resolve_device(device).type, int(seed), checkpoint, prompts,
              bool(return_logits), offload_dir, int(threads), float(timeout_s))
    return job, lay


# ---------------------------------------------------------------------------- one rank
class Comm:
    """The rank's process groups and its timed collectives and point-to-point transfers.

    Group creation is collective: every rank creates every group, in the same order. The
    groups are then connected in that order (one small all-reduce per tensor-parallel
    group, one small transfer per point-to-point channel) so that NCCL's lazy
    communicator set-up, which blocks both ends, never happens mid-schedule, where stage 0
    may wait for a token before the last stage has its hidden states.
    """

    def __init__(self, lay: ParallelLayout, rank: int, timers: Timers, device: torch.device):
        self.lay, self.rank, self.timers = lay, rank, timers
        d, s, _ = lay.place(rank)
        self.tp_group = None
        self.hidden_out = self.hidden_in = self.token_out = self.token_in = None
        made = []  # (group, sender, receiver): receiver None for a tensor-parallel group
        if lay.tp > 1:
            for rd in range(lay.dp):
                for rs in range(lay.pp):
                    ranks = [lay.rank(rd, rs, rt) for rt in range(lay.tp)]
                    g = dist.new_group(ranks)
                    made.append((g, ranks, None))
                    if (rd, rs) == (d, s):
                        self.tp_group = g
        if lay.pp > 1:
            for rd in range(lay.dp):
                for rt in range(lay.tp):
                    pairs = [(lay.rank(rd, rs, rt), lay.rank(rd, rs + 1, rt)) for rs in range(lay.pp - 1)]
                    pairs.append((lay.rank(rd, lay.pp - 1, rt), lay.rank(rd, 0, rt)))  # tokens back
                    for i, (a, b) in enumerate(pairs):
                        g = dist.new_group(sorted((a, b)))
                        made.append((g, a, b))
                        hidden = i < lay.pp - 1
                        if rank == a:
                            setattr(self, "hidden_out" if hidden else "token_out", (g, b))
                        if rank == b:
                            setattr(self, "hidden_in" if hidden else "token_in", (g, a))
        probe = torch.zeros(1, device=device)
        for g, a, b in made:
            if b is None and rank in a:
                dist.all_reduce(probe, group=g)
            elif rank == a:
                dist.send(probe, b, group=g)
            elif rank == b:
                dist.recv(probe, a, group=g)

    def allreduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the tensor-parallel group, in place."""
        with self.timers.region(C.COMMUNICATION, "allreduce", R.COLLECTIVE):
            dist.all_reduce(x, group=self.tp_group)
        self.timers.add(self.timers.phase, C.COMMUNICATION.value, R.COLLECTIVE.value, 0.0, _nbytes(x))
        return x

    def all_gather(self, x: torch.Tensor, timed: bool = True) -> torch.Tensor:
        """(...) on every tensor-parallel rank -> (tp, ...)."""
        out = [torch.empty_like(x) for _ in range(self.lay.tp)]
        with self.timers.region(C.COMMUNICATION, "allgather", R.COLLECTIVE) if timed else contextlib.nullcontext():
            dist.all_gather(out, x, group=self.tp_group)
        if timed:
            self.timers.add(self.timers.phase, C.COMMUNICATION.value, R.COLLECTIVE.value, 0.0, _nbytes(x))
        return torch.stack(out)

    def isend(self, x: torch.Tensor, channel, tag: int):
        group, peer = channel
        with self.timers.region(C.PIPELINE_SEND, "p2p", R.P2P):
            work = dist.isend(x, peer, group=group, tag=tag % TAG_SPAN)
        self.timers.add(self.timers.phase, C.PIPELINE_SEND.value, R.P2P.value, 0.0, _nbytes(x))
        return work

    def irecv(self, buf: torch.Tensor, channel, tag: int):
        group, peer = channel
        return dist.irecv(buf, peer, group=group, tag=tag % TAG_SPAN)

    def wait(self, work) -> None:
        """Block on a point-to-point transfer (timed as pipeline_send)."""
        with self.timers.region(C.PIPELINE_SEND, "p2p", R.P2P):
            work.wait()


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


class StageRunner:
    """One rank of a tensor/pipeline-parallel replica: its weight shard, its stage's KV
    cache, and the item loop of the module docstring."""

    def __init__(self, job: Job, lay: ParallelLayout, rank: int, device: torch.device):
        spec, policy = job.model, job.policy
        self.job, self.lay, self.rank, self.device = job, lay, rank, device
        self.replica, self.stage, self.tp_rank = lay.place(rank)
        self.cuda = device.type == "cuda"
        self.dtype = DTYPES[policy.dtype]
        self.timers = Timers(self.cuda, split_compute=True)
        self.comm = Comm(lay, rank, self.timers, device)
        self.first, self.last = self.stage == 0, self.stage == lay.pp - 1
        self.output = self.last and self.tp_rank == 0
        self.lo, self.hi = lay.stage_layers(spec.num_layers, self.stage)
        self.shard = tensor_shard(spec, lay.tp, self.tp_rank)
        self.tracked = 0
        source = weight_source(spec, job.seed, job.checkpoint)
        self.w = []
        for j in range(self.lo, self.hi):
            prefix = layer_prefix(spec, j)
            self.w.append({t.name: self._place(self.shard.slice(t.name, source.get(prefix + t.name, t.shape)))
                           for t in spec.layer_tensors()})
        self.vocab = split_range(spec.vocab_size, lay.tp, self.tp_rank)
        heads = {t.name: t for t in spec.head_tensors()}
        loaded = {}

        def rows(name: str, lo: int, hi: int) -> torch.Tensor:
            if name not in loaded:
                loaded[name] = self._place(source.get(name, heads[name].shape)[lo:hi])
            return loaded[name]

        if self.first:
            embed = "model.decoder.embed_tokens.weight" if spec.is_opt else "model.embed_tokens.weight"
            self.embed_w = rows(embed, *self.vocab)  # (V_t, h)
            if spec.is_opt:
                pos_name = "model.decoder.embed_positions.weight"
                self.pos_rows = split_range(heads[pos_name].shape[0], lay.tp, self.tp_rank)
                self.pos_w = rows(pos_name, *self.pos_rows)  # (P_t, h)
        if self.last:
            self.lm_w = rows(spec.lm_head_tensor().name, *self.vocab)  # (V_t, h)
            self.vectors = {n: self._place(source.get(n, t.shape)) for n, t in heads.items() if len(t.shape) == 1}
        wl, b, nb = job.workload, policy.gpu_batch_size, policy.num_gpu_batches
        self.b, self.nb = b, nb
        local = self.shard.spec
        self.R = b * local.num_kv_heads  # cache rows of a micro-batch: (sequence, kv head)
        T = wl.prompt_len + wl.gen_len - 1
        # (layers, micro-batches, positions, K/V, rows, d): position-major, as the single-device cache
        self.kv = torch.zeros(self.hi - self.lo, nb, T, 2, self.R, local.head_dim, dtype=self.dtype, device=device)
        self.tracked += _nbytes(self.kv)
        self.cos = self.sin = None
        if not spec.is_opt:
            self.cos, self.sin = layers.rope_tables(local, wl.prompt_len + wl.gen_len, device, self.dtype)
        self.reduce = self.comm.allreduce if lay.tp > 1 else None

    def _place(self, t: torch.Tensor) -> torch.Tensor:
        out = t.to(self.dtype).contiguous().to(self.device)
        self.tracked += _nbytes(out)
        return out

    def region(self, component, label=None, resource=R.GPU):
        return self.timers.region(component, label, resource)

    def _clock(self) -> float:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    # ------------------------------------------------------------------ pieces of an item
    def embed(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        """ids (b, t) on the device at positions pos..pos+t-1 -> (b, t, h), summed over the tp ranks."""
        tp = self.lay.tp
        v0, v1 = self.vocab
        t = ids.shape[1]
        with self.region(EW, "head"):
            x = F.embedding((ids - v0).clamp_(0, v1 - v0 - 1), self.embed_w)  # (b, t, h)
            if tp > 1:
                x.masked_fill_(((ids < v0) | (ids >= v1)).unsqueeze(-1), 0.0)
            if self.job.model.is_opt:  # learned positions, offset by 2 rows
                p0, p1 = self.pos_rows
                at = torch.arange(pos + 2, pos + 2 + t, device=self.device)  # (t,)
                p = F.embedding((at - p0).clamp_(0, p1 - p0 - 1), self.pos_w)  # (t, h)
                if tp > 1:
                    p.masked_fill_(((at < p0) | (at >= p1)).unsqueeze(-1), 0.0)
                x = x + p
        return self.comm.allreduce(x) if tp > 1 else x

    def attend_fn(self, jl: int, k: int, pos: int, prefill: bool):
        """The layers' attention callback over micro-batch k's cache of local layer jl."""
        kv_all = self.kv[jl, k]  # (T, 2, R, d)

        def attend(q, k_new, v_new):
            b, t, nh, d = q.shape
            R = self.R
            with self.region(EW, "cache_rows"):
                # (t, 2, b, nkv, d) -> (t, 2, R, d): rows = (sequence, kv head)
                kv_new = torch.stack([k_new.permute(1, 0, 2, 3), v_new.permute(1, 0, 2, 3)], dim=1).view(t, 2, R, d)
            with self.region(EW, "cache_write"):
                kv_all[pos:pos + t].copy_(kv_new)
            with self.region(C.ATTENTION):
                if prefill:
                    return layers.prefill_attention(q, k_new, v_new)  # (b, t, nh * d)
                kv = kv_all[:pos + 1]  # (pos+1, 2, R, d)
                o = layers.decode_attention_rows(q.view(R, nh * b // R, 1, d), kv[:, 0].transpose(0, 1),
                                                 kv[:, 1].transpose(0, 1))  # (R, g, 1, d)
                return o.reshape(b, 1, nh * d)

        return attend

    def run_layers(self, x: torch.Tensor, k: int, pos: int, prefill: bool) -> torch.Tensor:
        """x (b, t, h) through the stage's layers -> (b, t, h)."""
        spec = self.shard.spec
        t = x.shape[1]
        for jl, w in enumerate(self.w):
            attend = self.attend_fn(jl, k, pos, prefill)
            if spec.is_opt:
                x = layers.opt_layer(spec, w, x, attend, self.region, self.reduce)
            else:
                x = layers.llama_layer(spec, w, x, attend, self.region, self.cos[pos:pos + t], self.sin[pos:pos + t],
                                       self.reduce)
        return x

    def head(self, y: torch.Tensor, want_logits: bool):
        """y (b, h) of the last position -> next tokens (b,) int64, and the full logits (b, V) if asked."""
        spec, tp = self.job.model, self.lay.tp
        with self.region(EW, "head"):
            xf = layers.final_norm(spec, self.vectors, y)  # (b, h)
        with self.region(MM, "head_matmul"):
            lg = F.linear(xf, self.lm_w)  # (b, V_t)
        if tp == 1:
            with self.region(EW, "head"):
                tok = lg.argmax(dim=-1)  # (b,)
            return tok, (lg.float() if want_logits else None)
        v0 = self.vocab[0]
        with self.region(EW, "head"):
            m, i = lg.max(dim=-1)  # (b,) the first maximum of the rank's rows
            pair = torch.stack([m.double(), (i + v0).double()], dim=-1)  # (b, 2)
        every = self.comm.all_gather(pair)  # (tp, b, 2)
        with self.region(EW, "head"):
            best = every[:, :, 0].argmax(dim=0)  # (b,) the first rank holding the maximum
            tok = every[best, torch.arange(y.shape[0], device=self.device), 1].long()
        full = None
        if want_logits:
            widths = [hi - lo for lo, hi in (split_range(spec.vocab_size, tp, r) for r in range(tp))]
            padded = torch.zeros(y.shape[0], widths[0], dtype=lg.dtype, device=self.device)  # (b, widest)
            padded[:, :lg.shape[1]] = lg
            pieces = self.comm.all_gather(padded, timed=False)  # (tp, b, widest)
            full = torch.cat([pieces[r, :, :widths[r]] for r in range(tp)], dim=1).float()  # (b, V)
        return tok, full

    # ------------------------------------------------------------------ the item loop
    def run(self, prompts: torch.Tensor) -> dict:
        """prompts (N_replica, s) host int64. -> this rank's report."""
        wl, comm = self.job.workload, self.comm
        s, n, b, nb = wl.prompt_len, wl.gen_len, self.b, self.nb
        B = b * nb
        blocks = prompts.shape[0] // B
        items = [(blk, step, k) for blk in range(blocks) for step in range(n) for k in range(nb)]
        h = self.job.model.hidden_size
        tokens = torch.zeros(prompts.shape[0], n, dtype=torch.long) if self.output else None
        want = self.job.return_logits
        logits = torch.zeros(prompts.shape[0], n, self.job.model.vocab_size) if (want and self.output) else None
        recvs, sends, local_tokens = {}, [], {}

        def post(i: int) -> None:
            """Post item i's receive, if this stage receives anything for it."""
            if i >= len(items) or i in recvs:
                return
            blk, step, k = items[i]
            if not self.first:
                buf = torch.empty(b, s if step == 0 else 1, h, dtype=self.dtype, device=self.device)
                recvs[i] = (comm.irecv(buf, comm.hidden_in, i), buf)
            elif step > 0 and self.lay.pp > 1:
                buf = torch.empty(b, dtype=torch.long, device=self.device)
                recvs[i] = (comm.irecv(buf, comm.token_in, i - nb), buf)  # sent as item i - nb

        bounds = []
        dist.barrier()
        t0 = self._clock()
        for i, (blk, step, k) in enumerate(items):
            self.timers.phase = Phase.PREFILL.value if step == 0 else Phase.DECODE.value
            prefill = step == 0
            pos = 0 if prefill else s + step - 1
            post(i)
            post(i + 1)
            if self.first:
                if prefill:
                    ids = prompts[blk * B + k * b: blk * B + (k + 1) * b].to(self.device)  # (b, s)
                elif self.lay.pp == 1:
                    ids = local_tokens.pop(k).view(b, 1)
                else:
                    work, buf = recvs.pop(i)
                    comm.wait(work)
                    ids = buf.view(b, 1)
                x = self.embed(ids, pos)
            else:
                work, x = recvs.pop(i)
                comm.wait(work)
            y = self.run_layers(x, k, pos, prefill)
            if not self.last:
                sends.append((comm.isend(y, comm.hidden_out, i), y))
            else:
                tok, lg = self.head(y[:, -1], want)
                if step < n - 1:
                    if self.lay.pp > 1:
                        sends.append((comm.isend(tok, comm.token_out, i), tok))
                    else:
                        local_tokens[k] = tok
                if self.output:
                    rows = slice(blk * B + k * b, blk * B + (k + 1) * b)
                    tokens[rows, step] = tok.cpu()
                    if logits is not None:
                        logits[rows, step] = lg.cpu()
                    if k == nb - 1:
                        bounds.append(self._clock())
            sends = [pending for pending in sends if not pending[0].is_completed()]
        for work, _ in sends:
            comm.wait(work)
        wall = self._clock() - t0
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.timers.resolve()
        report = self._report(wall)
        if self.output:
            edges = [t0] + bounds
            span = [edges[j + 1] - edges[j] for j in range(len(bounds))]  # per (block, step)
            prefill_s = sum(span[blk * n] for blk in range(blocks))
            steps = [sum(span[blk * n + st] for blk in range(blocks)) for st in range(1, n)]
            report.update(tokens=tokens, logits=logits, prefill_s=prefill_s, decode_step_s=steps,
                          total_s=edges[-1] - t0)
        return report

    def _report(self, wall: float) -> dict:
        rows = [{"phase": ph, "component": c, "resource": r, "time_s": sec,
                 "bytes": self.timers.bytes.get((ph, c, r), 0)} for (ph, c, r), sec in sorted(self.timers.busy.items())]
        if self.cuda:
            gpu = int(torch.cuda.max_memory_allocated(self.device))
            name = torch.cuda.get_device_name(self.device)
            notes = []
        else:
            gpu, name = self.tracked, "cpu (the gpu tier is host memory)"
            notes = ["peak gpu memory on a CPU device counts the rank's weights and KV cache, not temporaries"]
        return {"rank": self.rank, "replica": self.replica, "stage": self.stage, "tp_rank": self.tp_rank,
                "layers": [self.lo, self.hi], "device": name, "breakdown": rows, "wall_s": wall,
                "peak_memory_bytes": {Tier.GPU.value: gpu, Tier.CPU.value: 0, Tier.DISK.value: 0},
                "output": self.output, "notes": notes}


def _engine_replica(job: Job, lay: ParallelLayout, rank: int, device: torch.device, prompts: torch.Tensor) -> dict:
    """tp = pp = 1: the replica is a single-device run of ``engine.Executor`` on its sequences."""
    wl = Workload(job.workload.prompt_len, job.workload.gen_len, prompts.shape[0])
    ex = Executor(job.model, wl, job.policy.with_(dp=1), str(device), job.offload_dir, job.seed, job.checkpoint)
    dist.barrier()
    res = ex.run(prompts, None, job.return_logits)
    d = res.to_dict()
    return {"rank": rank, "replica": lay.place(rank)[0], "stage": 0, "tp_rank": 0,
            "layers": [0, job.model.num_layers], "device": res.device, "breakdown": d["breakdown"],
            "wall_s": res.total_s, "peak_memory_bytes": d["peak_memory_bytes"], "output": True, "notes": res.notes,
            "tokens": torch.tensor(res.tokens, dtype=torch.long), "logits": res.logits, "prefill_s": res.prefill_s,
            "decode_step_s": res.decode_step_s, "total_s": res.total_s,
            "engine": {k: d.get(k, {}) for k in ("placement", "disk_io_mode_used", "compute_timing", "bandwidth",
                                                 "experts")}}


def run_rank(job: Job, lay: ParallelLayout, rank: int, device: torch.device) -> dict:
    """This rank's part of the run (the process group is initialised) -> its report."""
    d, _, _ = lay.place(rank)
    per = job.prompts.shape[0] // lay.dp
    prompts = job.prompts[d * per:(d + 1) * per]
    with torch.no_grad():
        if lay.tp == lay.pp == 1:
            return _engine_replica(job, lay, rank, device, prompts)
        return StageRunner(job, lay, rank, device).run(prompts)


def _rank_device(job: Job, local_rank: int) -> torch.device:
    if job.device_type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


def _init(job: Job, rank: int, world: int, device: torch.device, init_method: str) -> None:
    kw = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init_method, rank=rank,
                            world_size=world, timeout=timedelta(seconds=job.timeout_s), **kw)


def _die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (no orphan ranks)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _spawned(local_rank: int, rundir: str, world: int) -> None:
    """The target of ``torch.multiprocessing``: one rank; its report or its error lands in ``rundir``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the ranks (SIGTERM) on Ctrl-C
    _die_with_parent()
    rank = local_rank
    try:
        with open(os.path.join(rundir, "job.pkl"), "rb") as f:
            job, lay = pickle.load(f)
        torch.set_num_threads(job.threads)
        device = _rank_device(job, local_rank)
        _init(job, rank, world, device, "file://" + os.path.join(rundir, "rendezvous"))
        report = run_rank(job, lay, rank, device)
        with open(os.path.join(rundir, f"rank{rank}.pkl"), "wb") as f:
            pickle.dump(report, f)
        dist.destroy_process_group()
    except BaseException as e:
        with open(os.path.join(rundir, f"error{rank}.json"), "w") as f:
            json.dump({"rank": rank, "type": type(e).__name__, "message": str(e), "time": time.time()}, f)
        raise


# ---------------------------------------------------------------------------- the launcher
def _start_method(asked: str | None) -> str:
    methods = multiprocessing.get_all_start_methods()
    if asked:
        if asked not in methods:
            raise ExecutorError(f"start_method {asked!r} is not one of {', '.join(methods)}")
        return asked
    return "forkserver" if "forkserver" in methods else "spawn"


@contextlib.contextmanager
def _deferred_signals(signums=(signal.SIGINT, signal.SIGTERM)):
    """Hold SIGINT/SIGTERM back during the block, then hand them to the handlers they had."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(caught):
            handler = previous[s]
            if callable(handler):
                handler(s, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(s)


def _stop(processes) -> None:
    """SIGTERM every live rank, SIGKILL what is left after STOP_GRACE_S, reap all."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.kill()
        p.join()


def _failure(rundir: str, lay: ParallelLayout, exc: Exception) -> ParallelRunError:
    """The first rank's error (the others usually fail because it went away)."""
    errors = []
    for r in range(lay.gpus):
        path = os.path.join(rundir, f"error{r}.json")
        if os.path.exists(path):
            with contextlib.suppress(OSError, ValueError), open(path) as f:
                errors.append(json.load(f))
    if errors:
        e = min(errors, key=lambda x: x["time"])
        d, s, t = lay.place(e["rank"])
        what = f"{e['type']}: {e['message']}" if e["message"] else e["type"]
    else:
        r = getattr(exc, "error_index", 0)
        d, s, t = lay.place(r)
        e = {"rank": r}
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    what = " ".join(what.split())
    return ParallelRunError(f"parallel run failed on rank {e['rank']} of {lay.gpus} (replica {d}, stage {s}, "
                            f"tp rank {t}): {what}")


def launch(job: Job, lay: ParallelLayout, start_method: str | None = None) -> list[dict]:
    """Run every rank as a local process; -> their reports in rank order."""
    import torch.multiprocessing as tmp

    method = _start_method(start_method)
    rundir = tempfile.mkdtemp(prefix="llmsim-parallel-")
    pc = None
    try:
        with open(os.path.join(rundir, "job.pkl"), "wb") as f:
            pickle.dump((job, lay), f)
        main_name = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)
        if method == "forkserver" and main_name != __spec__.name:
            # The server imports torch and this module once; the ranks are forked from it. (Not when
            # this module is the main one: each rank re-runs the main module, which must not be loaded.)
            multiprocessing.get_context("forkserver").set_forkserver_preload([__spec__.name])
        with sigterm_as_exit():
            with _deferred_signals():  # every started rank must be in pc before Ctrl-C can stop the launch
                pc = tmp.start_processes(_spawned, args=(rundir, lay.gpus), nprocs=lay.gpus, join=False,
                                         daemon=True, start_method=method)
            try:
                while not pc.join(timeout=0.1, grace_period=STOP_GRACE_S):
                    pass
            except (tmp.ProcessRaisedException, tmp.ProcessExitedException) as e:
                raise _failure(rundir, lay, e) from None
        reports = []
        for r in range(lay.gpus):
            with open(os.path.join(rundir, f"rank{r}.pkl"), "rb") as f:
                reports.append(pickle.load(f))
        return reports
    finally:
        if pc is not None:
            _stop(pc.processes)
            for path in pc.error_files:
                with contextlib.suppress(OSError, TypeError):
                    os.unlink(path)
        shutil.rmtree(rundir, ignore_errors=True)


def _component_s(rows: list[dict]) -> dict:
    out = {}
    for row in rows:
        out.setdefault(row["phase"], {}).setdefault(row["component"], 0.0)
        out[row["phase"]][row["component"]] += row["time_s"]
    return out


def _component_bytes(rows: list[dict]) -> dict:
    """{phase: {component: bytes}} of the components that moved bytes."""
    out = {}
    for row in rows:
        if row["bytes"]:
            out.setdefault(row["phase"], {}).setdefault(row["component"], 0)
            out[row["phase"]][row["component"]] += row["bytes"]
    return out


def _busy_s(report: dict) -> float:
    return sum(r["time_s"] for r in report["breakdown"] if r["component"] != C.PIPELINE_SEND.value)


def assemble(job: Job, lay: ParallelLayout, reports: list[dict], start_method: str | None = None) -> dict:
    """The ranks' reports -> one result with ``RunResult.to_dict()``'s keys (see the module docstring)."""
    spec, wl, policy = job.model, job.workload, job.policy
    reports = sorted(reports, key=lambda r: r["rank"])
    outputs = sorted((r for r in reports if r["output"]), key=lambda r: r["replica"])
    N, n = job.prompts.shape[0], wl.gen_len
    tokens = torch.cat([r["tokens"] for r in outputs])
    slowest = max(outputs, key=lambda r: r["total_s"])
    prefill_s, steps = slowest["prefill_s"], list(slowest["decode_step_s"])
    decode_s = float(sum(steps))
    total = prefill_s + decode_s
    busiest = max(reports, key=_busy_s)
    gpu_peak = max(r["peak_memory_bytes"][Tier.GPU.value] for r in reports)
    notes = [f"component_s and breakdown are rank {busiest['rank']}'s (replica {busiest['replica']}, stage "
             f"{busiest['stage']}, tp rank {busiest['tp_rank']}), the busiest rank by time in components other than "
             "pipeline_send; ranks lists every rank",
             "step times are the slowest replica's, from its last stage"]
    if lay.pp > 1:
        notes.append("pipeline_send is the time a rank is blocked on stage-to-stage transfers, the wait for the "
                     "upstream stage (pipeline bubble) included")
    for r in reports:
        notes += r["notes"]
    engine = busiest.get("engine", {})
    out = {
        "model": spec.name, "device": f"{lay.gpus} x {busiest['device']}", "torch_version": torch.__version__,
        "policy": policy.to_dict(), "workload": {**wl.to_dict(), "num_sequences": N}, "num_sequences": N,
        "block_size": policy.block_size, "num_blocks": N // lay.dp // policy.block_size,
        "tokens": tokens.tolist(), "prefill_s": prefill_s, "decode_step_s": steps, "decode_s": decode_s,
        "total_s": total, "throughput_tok_s": N * n / total if total > 0 else math.inf,
        "decode_throughput_tok_s": (N * (n - 1) / decode_s) if n > 1 and decode_s > 0 else None,
        "component_s": _component_s(busiest["breakdown"]), "breakdown": busiest["breakdown"],
        "peak_memory_bytes": {Tier.GPU.value: gpu_peak,
                              Tier.CPU.value: sum(r["peak_memory_bytes"][Tier.CPU.value] for r in reports),
                              Tier.DISK.value: sum(r["peak_memory_bytes"][Tier.DISK.value] for r in reports)},
        "placement": engine.get("placement", {k: {"gpu_frac": 1.0, "cpu_frac": 0.0, "disk_frac": 0.0}
                                              for k in ("weights", "cache", "activations")}),
        "disk_io_mode_used": engine.get("disk_io_mode_used"),
        "compute_timing": engine.get("compute_timing", "split"), "bandwidth": engine.get("bandwidth", {}),
        "notes": list(dict.fromkeys(notes)),
        "experts": engine.get("experts", {}),
        "layout": {"tp": lay.tp, "pp": lay.pp, "dp": lay.dp, "world_size": lay.gpus,
                   "backend": "nccl" if job.device_type == "cuda" else "gloo", "start_method": start_method,
                   "stage_layers": [list(lay.stage_layers(spec.num_layers, s)) for s in range(lay.pp)],
                   "embedding": "vocab-parallel" if lay.tp > 1 else "whole",
                   "lm_head": "vocab-parallel" if lay.tp > 1 else "whole",
                   "schedule": "streamed GPipe" if lay.pp > 1 else ("single-device executor per replica"
                                                                    if lay.tp == 1 else "tensor parallel")},
        "busiest_rank": busiest["rank"],
        "ranks": [{"rank": r["rank"], "replica": r["replica"], "stage": r["stage"], "tp_rank": r["tp_rank"],
                   "layers": r["layers"], "wall_s": r["wall_s"], "busy_s": _busy_s(r),
                   "component_s": _component_s(r["breakdown"]), "bytes": _component_bytes(r["breakdown"]),
                   "peak_memory_bytes": r["peak_memory_bytes"]}
                  for r in reports],
    }
    if job.return_logits:
        out["logits"] = torch.cat([r["logits"] for r in outputs])  # (N, gen_len, V) fp32; not JSON
    return out


def run_parallel(model: ModelSpec, workload: Workload, policy: Policy, device: str = "cpu", seed: int = 0,
                 checkpoint: str | None = None, prompt_ids=None, return_logits: bool = False,
                 nprocs: int | None = None, *, offload_dir: str | None = None, start_method: str | None = None,
                 threads_per_rank: int | None = None, timeout_s: float = 600.0) -> dict:
    """Generate ``workload.gen_len`` tokens greedily for every sequence on ``policy.tp x pp x dp``
    local processes (see the module docstring); -> a JSON-ready dict with ``RunResult.to_dict()``'s
    keys plus ``layout``, ``busiest_rank`` and ``ranks`` (and ``logits``, a tensor (N, gen_len, V)
    fp32, when ``return_logits``).

    ``prompt_ids`` (N, prompt_len) default to the single-device executor's seeded prompts;
    ``nprocs``, when given, must equal tp x pp x dp; ``offload_dir`` serves the replicas of
    a ``tp = pp = 1`` run; ``threads_per_rank`` defaults to the cores shared evenly (at
    least 1); ``timeout_s`` bounds the rendezvous and every collective. Raises
    ``PolicyError``/``ExecutorError`` before starting anything for a layout or policy that
    cannot run, ``ParallelRunError`` naming the rank when a rank fails.
    """
    job, lay = make_job(model, workload, policy, device, seed, checkpoint, prompt_ids, return_logits, nprocs,
                        offload_dir, threads_per_rank, timeout_s)
    method = _start_method(start_method)
    return assemble(job, lay, launch(job, lay, method), method)


# ---------------------------------------------------------------------------- command line (torchrun)
def _load_model(text: str) -> ModelSpec:
    """A preset, HF id or config.json (``get_model``), or a JSON file of ``ModelSpec.to_dict()``."""
    if text.endswith(".json") and os.path.isfile(text):
        try:
            with open(text) as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise ModelError(f"--model {text}: cannot read it as JSON ({e})") from None
        if isinstance(doc, dict) and "family" in doc:
            return ModelSpec.from_dict(doc, where=f"--model {text}")
    return get_model(text)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m validate.executor.distributed",
                                 description="Tensor/pipeline/data-parallel generation; run it under torchrun "
                                             "(--nproc-per-node tp x pp x dp) or alone (it starts the ranks).")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-len", type=int, required=True)
    ap.add_argument("--gen-len", type=int, required=True)
    ap.add_argument("--num-sequences", type=int)
    ap.add_argument("--gpu-batch-size", type=int, default=1)
    ap.add_argument("--num-gpu-batches", type=int, default=1)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--dp", type=int, default=1)
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--checkpoint")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env_world = os.environ.get("WORLD_SIZE")
    try:
        spec = _load_model(args.model)
        wl = Workload(args.prompt_len, args.gen_len, args.num_sequences)
        policy = Policy(gpu_batch_size=args.gpu_batch_size, num_gpu_batches=args.num_gpu_batches, dtype=args.dtype,
                        tp=args.tp, pp=args.pp, dp=args.dp)
        if env_world is None:
            out = run_parallel(spec, wl, policy, args.device, args.seed, args.checkpoint)
        else:
            out = _torchrun_rank(spec, wl, policy, args, int(env_world))
    except LlmsimError as e:
        rank = os.environ.get("RANK")
        print(f"error: {'rank ' + rank + ': ' if rank else ''}{e}", file=sys.stderr)
        return 2
    if out is not None:
        if args.json:
            print(json.dumps(out))
        else:
            print(f"{out['model']} on {out['device']} (tp {args.tp} x pp {args.pp} x dp {args.dp}): prefill "
                  f"{out['prefill_s']:.4g} s, decode {out['decode_s']:.4g} s, {out['throughput_tok_s']:.1f} tok/s")
    return 0


def _torchrun_rank(spec, wl, policy, args, world: int) -> dict | None:
    """One rank started by torchrun (env://); rank 0 returns the assembled result."""
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    job, lay = make_job(spec, wl, policy, args.device, args.seed, args.checkpoint,
                        ranks_here=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if world != lay.gpus:
        raise PolicyError(f"WORLD_SIZE {world} (torchrun's processes) does not match --tp {lay.tp} x --pp {lay.pp} "
                          f"x --dp {lay.dp} = {lay.gpus}")
    torch.set_num_threads(job.threads)
    device = _rank_device(job, local_rank)
    _init(job, rank, world, device, "env://")
    report = run_rank(job, lay, rank, device)
    gathered = [None] * world if rank == 0 else None
    dist.gather_object(report, gathered, dst=0)
    dist.destroy_process_group()
    return assemble(job, lay, gathered, "torchrun") if rank == 0 else None


if __name__ == "__main__":
    # Run the module's own copy (not __main__'s), so the ranks it starts import it by name.
    from validate.executor import distributed

    sys.exit(distributed.main())
