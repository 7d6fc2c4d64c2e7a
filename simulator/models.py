"""ModelSpec: the architecture of a decoder-only transformer, with derived bytes and FLOPs.

Presets cover OPT, Llama-2/3, Mistral, and the mixture-of-experts models Mixtral,
Qwen1.5-MoE and DeepSeek-V2/V3; ``ModelSpec.from_hf_config`` reads a Hugging Face
``config.json``. The executor builds its torch modules from the same spec and a
test checks that ``num_parameters()`` equals the module's ``numel()`` sum.

Tensor names follow the Hugging Face checkpoints (``self_attn.q_proj.weight``...), so a
local checkpoint loads by name. Shapes are torch ``nn.Linear`` shapes: (out_features,
in_features).
"""

from __future__ import annotations

import functools
import math
import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

from simulator import compression
from simulator.errors import ModelError

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
WEIGHT_FORMATS = ("fp32", "fp16", "bf16", "int8", "int4")
_HF_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "half": "fp16", "float": "fp32"}


@dataclass(frozen=True)
class TensorSpec:
    """One parameter tensor: its checkpoint name and shape (``(out, in)`` for matrices)."""

    name: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) == 2

    def nbytes(self, fmt: str) -> int:
        """Storage bytes in ``fmt``: fp32/fp16/bf16; int8 (per-row fp16 scale); int4
        (group-wise 4-bit, see ``simulator.compression``). Vectors (biases, norms) stay at
        fp16 under int8/int4, as FlexGen keeps them.
        """
        if fmt in DTYPE_BYTES:
            return self.numel * DTYPE_BYTES[fmt]
        if not self.is_matrix:
            return self.numel * DTYPE_BYTES["fp16"]
        rows, cols = self.shape
        if fmt == "int8":
            return rows * cols + rows * 2
        if fmt == "int4":
            return compression.packed_bytes(rows, cols)
        raise ModelError(f"weight format {fmt!r} is not one of {', '.join(WEIGHT_FORMATS)}")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer.

    ``family`` selects the block structure: ``opt`` (pre-LayerNorm, learned positions,
    ReLU MLP with biases) or ``llama`` (RMSNorm, rotary positions, SwiGLU MLP, grouped-query
    attention); ``mistral``, ``qwen2`` and ``mixtral`` are llama-shaped (qwen2 adds q/k/v
    biases, mixtral replaces the MLP by ``num_experts`` SwiGLU experts of which
    ``experts_per_token`` run per token).

    Mixture of experts (``is_moe``): ``ffn_dim`` is the width of one routed expert.
    ``qwen2_moe`` (Qwen1.5-MoE) is qwen2-shaped with ``num_experts`` routed experts plus an
    always-on shared expert of width ``shared_expert_dim`` behind a sigmoid gate
    (``shared_expert_gate``); ``deepseek_v2``/``deepseek_v3`` have routed experts plus
    shared experts of total width ``shared_expert_dim`` and Multi-head Latent Attention
    (``is_mla``: DeepSeek-V2, arXiv 2405.04434, section 2.1): queries through a rank
    ``q_lora_rank`` bottleneck (0: a plain q_proj), keys and values from a cached latent
    of ``kv_lora_rank`` plus a shared rotary key of ``qk_rope_head_dim``; query/key heads
    of ``qk_nope_head_dim + qk_rope_head_dim`` (= ``head_dim``), value heads of
    ``v_head_dim``; the latent is shared by every head, so ``num_kv_heads`` is 1 (as in
    multi-query attention). ``dense_layers``: indices of layers whose MLP is a dense SwiGLU
    of ``dense_ffn_dim`` instead of experts (DeepSeek's ``first_k_dense_replace``,
    Qwen-MoE's ``mlp_only_layers``). ``moe_router_bias``: DeepSeek-V3's per-expert score
    correction bias.
    """

    name: str
    family: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    ffn_dim: int
    vocab_size: int
    max_position_embeddings: int
    head_dim: int = 0  # 0: hidden_size // num_heads
    tie_word_embeddings: bool = False
    num_experts: int = 1
    experts_per_token: int = 1
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dtype: str = "fp16"
    hf_ids: tuple[str, ...] = field(default=(), compare=False)
    # Mixture of experts beyond Mixtral, and Multi-head Latent Attention (see the docstring).
    shared_expert_dim: int = 0
    shared_expert_gate: bool = False
    dense_layers: tuple[int, ...] = ()
    dense_ffn_dim: int = 0
    moe_router_bias: bool = False
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    # Attention and MLP read the same normed input and their outputs are summed (GPT-J, PaLM:
    # "parallel formulation", arXiv 2204.02311 section 2): one tensor-parallel reduction per layer.
    parallel_block: bool = False

    def __post_init__(self):
        check_fields({f: getattr(self, f) for f in _CHECKED}, f"model {self.name}")
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if not isinstance(self.parallel_block, bool):
            raise ModelError(f"model {self.name}: parallel_block must be true or false, got {self.parallel_block!r}")
        self._check_moe_fields()

    def _check_moe_fields(self) -> None:
        for key in ("shared_expert_dim", "dense_ffn_dim", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim",
                    "v_head_dim"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ModelError(f"model {self.name}: {key} must be a non-negative integer, got {value!r}")
        object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        bad = [i for i in self.dense_layers if not isinstance(i, int) or not 0 <= i < self.num_layers]
        if bad or len(set(self.dense_layers)) != len(self.dense_layers):
            raise ModelError(f"model {self.name}: dense_layers {list(self.dense_layers)} must be distinct layer "
                             f"indices in 0..{self.num_layers - 1}")
        if self.dense_layers and not self.dense_ffn_dim:
            raise ModelError(f"model {self.name}: dense_layers need dense_ffn_dim (intermediate_size) > 0")
        if (self.shared_expert_dim or self.dense_layers) and not self.is_moe:
            raise ModelError(f"model {self.name}: shared experts and dense_layers need num_experts > 1")
        if self.is_mla:
            if not self.qk_rope_head_dim or not self.v_head_dim or self.qk_rope_head_dim >= self.head_dim:
                raise ModelError(f"model {self.name}: MLA (kv_lora_rank {self.kv_lora_rank}) needs qk_rope_head_dim "
                                 f"and v_head_dim > 0 and head_dim ({self.head_dim}) = qk_nope_head_dim + "
                                 "qk_rope_head_dim")
            if self.num_kv_heads != 1:
                raise ModelError(f"model {self.name}: MLA caches one latent shared by every head: num_kv_heads "
                                 f"must be 1, got {self.num_kv_heads}")

    # ----------------------------------------------------------------- structure
    @property
    def is_opt(self) -> bool:
        return self.family == "opt"

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def is_mla(self) -> bool:
        """Multi-head Latent Attention (DeepSeek-V2/V3): a compressed KV cache."""
        return self.kv_lora_rank > 0

    @property
    def num_moe_layers(self) -> int:
        """Layers whose MLP is experts (the others are ``dense_layers``)."""
        return self.num_layers - len(self.dense_layers) if self.is_moe else 0

    @property
    def q_dim(self) -> int:
        """Width of the query projection: num_heads x head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections: num_kv_heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @functools.lru_cache(maxsize=None)
    def layer_tensors(self, layer: int | None = None) -> tuple[TensorSpec, ...]:
        """The parameter tensors of one decoder layer, in the order the executor places them.

        ``layer``: the layer's index; None (the default) is the model's typical layer - its
        expert layer for a mixture of experts - which the cost model prices for every layer
        (DeepSeek's first dense layers cost the same compute by design: ``dense_ffn_dim`` =
        (experts_per_token + shared) x ``ffn_dim``; their weights are fewer, see
        ``weight_bytes``, which counts every layer as it is)."""
        h, f = self.hidden_size, self.ffn_dim
        t = TensorSpec
        if self.is_opt:
            return (
                t("self_attn_layer_norm.weight", (h,)), t("self_attn_layer_norm.bias", (h,)),
                t("self_attn.q_proj.weight", (self.q_dim, h)), t("self_attn.q_proj.bias", (self.q_dim,)),
                t("self_attn.k_proj.weight", (self.kv_dim, h)), t("self_attn.k_proj.bias", (self.kv_dim,)),
                t("self_attn.v_proj.weight", (self.kv_dim, h)), t("self_attn.v_proj.bias", (self.kv_dim,)),
                t("self_attn.out_proj.weight", (h, self.q_dim)), t("self_attn.out_proj.bias", (h,)),
                t("final_layer_norm.weight", (h,)), t("final_layer_norm.bias", (h,)),
                t("fc1.weight", (f, h)), t("fc1.bias", (f,)),
                t("fc2.weight", (h, f)), t("fc2.bias", (h,)),
            )
        if self.is_mla:
            out = [t("input_layernorm.weight", (h,)), *self._mla_tensors()]
        else:
            out = [
                t("input_layernorm.weight", (h,)),
                t("self_attn.q_proj.weight", (self.q_dim, h)),
                t("self_attn.k_proj.weight", (self.kv_dim, h)),
                t("self_attn.v_proj.weight", (self.kv_dim, h)),
            ]
            if self.family in ("qwen2", "qwen2_moe"):
                out += [t("self_attn.q_proj.bias", (self.q_dim,)), t("self_attn.k_proj.bias", (self.kv_dim,)),
                        t("self_attn.v_proj.bias", (self.kv_dim,))]
            out.append(t("self_attn.o_proj.weight", (h, self.q_dim)))
        out.append(t("post_attention_layernorm.weight", (h,)))
        dense = layer is not None and layer in self.dense_layers
        if self.is_moe and not dense:
            out += self._moe_tensors()
        else:
            fd = self.dense_ffn_dim if dense else f
            out += [t("mlp.gate_proj.weight", (fd, h)), t("mlp.up_proj.weight", (fd, h)),
                    t("mlp.down_proj.weight", (h, fd))]
        return tuple(out)

    def _mla_tensors(self) -> list[TensorSpec]:
        """DeepSeek-V2 MLA (arXiv 2405.04434, section 2.1; HF DeepseekV2Attention names)."""
        h, t, nh = self.hidden_size, TensorSpec, self.num_heads
        r, nope = self.qk_rope_head_dim, self.head_dim - self.qk_rope_head_dim
        out = []
        if self.q_lora_rank:
            out += [t("self_attn.q_a_proj.weight", (self.q_lora_rank, h)),
                    t("self_attn.q_a_layernorm.weight", (self.q_lora_rank,)),
                    t("self_attn.q_b_proj.weight", (self.q_dim, self.q_lora_rank))]
        else:
            out.append(t("self_attn.q_proj.weight", (self.q_dim, h)))
        return out + [t("self_attn.kv_a_proj_with_mqa.weight", (self.kv_lora_rank + r, h)),
                      t("self_attn.kv_a_layernorm.weight", (self.kv_lora_rank,)),
                      t("self_attn.kv_b_proj.weight", (nh * (nope + self.v_head_dim), self.kv_lora_rank)),
                      t("self_attn.o_proj.weight", (h, nh * self.v_head_dim))]

    def _moe_tensors(self) -> list[TensorSpec]:
        """The router, the shared expert(s) and the routed experts (HF checkpoint names)."""
        h, f, E, t = self.hidden_size, self.ffn_dim, self.num_experts, TensorSpec
        if self.family == "mixtral":
            out = [t("block_sparse_moe.gate.weight", (E, h))]
            for e in range(E):
                p = f"block_sparse_moe.experts.{e}."
                out += [t(p + "w1.weight", (f, h)), t(p + "w3.weight", (f, h)), t(p + "w2.weight", (h, f))]
            return out
        out = [t("mlp.gate.weight", (E, h))]
        if self.moe_router_bias:
            out.append(t("mlp.gate.e_score_correction_bias", (E,)))
        if self.shared_expert_dim:
            fs = self.shared_expert_dim
            p = "mlp.shared_expert." if self.family == "qwen2_moe" else "mlp.shared_experts."
            out += [t(p + "gate_proj.weight", (fs, h)), t(p + "up_proj.weight", (fs, h)),
                    t(p + "down_proj.weight", (h, fs))]
            if self.shared_expert_gate:
                out.append(t("mlp.shared_expert_gate.weight", (1, h)))
        for e in range(E):
            p = f"mlp.experts.{e}."
            out += [t(p + "gate_proj.weight", (f, h)), t(p + "up_proj.weight", (f, h)),
                    t(p + "down_proj.weight", (h, f))]
        return out

    @functools.lru_cache(maxsize=None)
    def head_tensors(self) -> tuple[TensorSpec, ...]:
        """Parameters outside the decoder layers: embeddings, final norm, LM head (if untied).

        The embedding and the LM head are (vocab, hidden) matrices; the executor splits them
        by rows across tiers, so their placement follows the weight fractions exactly.
        """
        h, v = self.hidden_size, self.vocab_size
        t = TensorSpec
        if self.is_opt:
            # OPT's learned positions carry an offset of 2 rows (HF OPTLearnedPositionalEmbedding).
            out = [t("model.decoder.embed_tokens.weight", (v, h)),
                   t("model.decoder.embed_positions.weight", (self.max_position_embeddings + 2, h)),
                   t("model.decoder.final_layer_norm.weight", (h,)),
                   t("model.decoder.final_layer_norm.bias", (h,))]
        else:
            out = [t("model.embed_tokens.weight", (v, h)), t("model.norm.weight", (h,))]
        if not self.tie_word_embeddings:
            out.append(t("lm_head.weight", (v, h)))
        return tuple(out)

    # ----------------------------------------------------------------- counts
    def layer_parameters(self) -> int:
        return sum(x.numel for x in self.layer_tensors())

    def head_parameters(self) -> int:
        return sum(x.numel for x in self.head_tensors())

    def num_parameters(self) -> int:
        """All parameters (tied embeddings counted once), as ``sum(p.numel())`` of the module."""
        dense = self.dense_layers
        extra = sum(sum(x.numel for x in self.layer_tensors(i)) for i in dense)
        return (self.num_layers - len(dense)) * self.layer_parameters() + extra + self.head_parameters()

    def active_parameters(self) -> int:
        """Parameters one token uses: every parameter but the routed experts it is not sent
        to (``num_experts - experts_per_token`` of them in each expert layer). Embeddings and
        the LM head included, as the published "activated" counts (Mixtral 12.9B,
        DeepSeek-V3 37B) count them. Unit: parameters."""
        if not self.is_moe:
            return self.num_parameters()
        idle = self.num_experts - self.experts_per_token
        return self.num_parameters() - self.num_moe_layers * idle * 3 * self.hidden_size * self.ffn_dim

    @functools.lru_cache(maxsize=None)
    def layer_weight_bytes(self, fmt: str | None = None) -> int:
        """Bytes of one decoder layer's weights stored in ``fmt`` (default: the model dtype)."""
        fmt = fmt or self.dtype
        return sum(x.nbytes(fmt) for x in self.layer_tensors())

    @functools.lru_cache(maxsize=None)
    def head_weight_bytes(self, fmt: str | None = None) -> int:
        fmt = fmt or self.dtype
        return sum(x.nbytes(fmt) for x in self.head_tensors())

    def weight_bytes(self, fmt: str | None = None) -> int:
        fmt = fmt or self.dtype
        dense = self.dense_layers
        extra = sum(sum(x.nbytes(fmt) for x in self.layer_tensors(i)) for i in dense)
        return (self.num_layers - len(dense)) * self.layer_weight_bytes(fmt) + extra + self.head_weight_bytes(fmt)

    def lm_head_tensor(self) -> TensorSpec:
        """The (vocab, hidden) matrix the LM head multiplies by (the embedding when tied)."""
        name = "model.decoder.embed_tokens.weight" if self.is_opt else "model.embed_tokens.weight"
        if not self.tie_word_embeddings:
            name = "lm_head.weight"
        return TensorSpec(name, (self.vocab_size, self.hidden_size))

    @functools.lru_cache(maxsize=None)
    def kv_bytes_per_token(self, dtype: str | None = None, compressed: bool = False) -> float:
        """KV-cache bytes per token per layer: 2 (K and V) x num_kv_heads x head_dim x bytes.

        GQA-aware (num_kv_heads, not num_heads). ``compressed``: group-wise 4-bit with groups
        along head_dim (``simulator.compression``).

        MLA (``is_mla``): the cache holds one compressed latent of ``kv_lora_rank`` plus the
        shared rotary key of ``qk_rope_head_dim`` per token and layer, for all heads at once:
        ``(kv_lora_rank + qk_rope_head_dim) x bytes`` (DeepSeek-V2, arXiv 2405.04434, section
        2.1.4 and Table 1: 4.5 d_h elements for d_h = 128 per layer, against 2 n_h d_h = 256
        d_h for its 128-head MHA). 4-bit: one row of that width.
        """
        if self.is_mla:
            width = self.kv_lora_rank + self.qk_rope_head_dim
            return compression.packed_bytes(1, width) if compressed else width * DTYPE_BYTES[dtype or self.dtype]
        if compressed:
            return 2 * self.num_kv_heads * compression.packed_bytes(1, self.head_dim)
        return 2 * self.kv_dim * DTYPE_BYTES[dtype or self.dtype]

    # ----------------------------------------------------------------- FLOPs
    @functools.lru_cache(maxsize=None)
    def matmul_flop_per_token(self) -> int:
        """GEMM FLOPs of one layer for one token: 2 x (active matrix parameters).

        MoE: the router, the shared experts and ``experts_per_token`` routed experts
        (Mixtral, arXiv 2401.04088). MLA: each of its projections once per token (with the
        up-projections absorbed, DeepSeek-V2 section 2.1.2, the query and output products
        with kv_b_proj's halves cost the same). Biases and norms are not GEMM work and are
        left out.
        """
        active = 0
        for x in self.layer_tensors():
            if not x.is_matrix:
                continue
            if ".experts." in x.name:
                continue
            active += x.numel
        if self.is_moe:
            active += self.experts_per_token * 3 * self.hidden_size * self.ffn_dim
        return 2 * active

    def layer_flop_prefill(self, prompt_len: int) -> float:
        """FLOPs of one layer for a prefill of ``s`` tokens of one sequence.

        GEMMs: ``s x matmul_flop_per_token``. Causal attention: query i attends to i+1 keys,
        so QK^T and PV each cost ``2 x head_dim x s(s+1)/2`` per head; in all
        ``2 x s(s+1) x q_dim``. Unit: FLOP.
        """
        s = prompt_len
        return s * self.matmul_flop_per_token() + 2.0 * s * (s + 1) * self.q_dim

    def layer_flop_decode(self, context_len: int) -> float:
        """FLOPs of one layer for one decode step of one sequence attending to ``L`` keys
        (the new token included): GEMMs ``matmul_flop_per_token`` plus attention
        ``4 x L x q_dim`` (QK^T and PV, 2 FLOP per multiply-add). Unit: FLOP.
        """
        return self.matmul_flop_per_token() + 4.0 * context_len * self.q_dim

    def head_flop_per_token(self) -> int:
        """LM-head FLOPs for one token's logits: 2 x hidden x vocab."""
        return 2 * self.hidden_size * self.vocab_size

    # ----------------------------------------------------------------- I/O
    def to_dict(self) -> dict:
        return {
            "name": self.name, "family": self.family, "hidden_size": self.hidden_size,
            "num_layers": self.num_layers, "num_heads": self.num_heads, "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "ffn_dim": self.ffn_dim, "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token, "rope_theta": self.rope_theta,
            "norm_eps": self.norm_eps, "dtype": self.dtype, "num_parameters": self.num_parameters(),
            **self._moe_dict(),
            **({"parallel_block": True} if self.parallel_block else {}),
        }

    _MOE_KEYS = ("shared_expert_dim", "shared_expert_gate", "dense_layers", "dense_ffn_dim", "moe_router_bias",
                 "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "v_head_dim")

    def _moe_dict(self) -> dict:
        """The shared-expert, dense-layer and MLA fields where they are set (a model without
        them keeps the dictionary it always had), and the active parameter count of an MoE."""
        out = {k: (list(v) if isinstance(v, tuple) else v) for k in self._MOE_KEYS
               if (v := getattr(self, k)) not in (0, False, ())}
        if self.is_moe:
            out["active_parameters"] = self.active_parameters()
        return out

    @classmethod
    def from_dict(cls, d: dict, where: str = "model") -> "ModelSpec":
        """Inverse of ``to_dict`` (derived keys such as num_parameters are ignored). Every
        message names ``where`` (e.g. a record file and its key) and the field."""
        if not isinstance(d, dict):
            raise ModelError(f"{where}: expected a mapping, got {type(d).__name__}")
        fields = {f for f in cls.__dataclass_fields__ if f != "hf_ids"}
        if isinstance(d.get("dense_layers"), list):
            d = {**d, "dense_layers": tuple(d["dense_layers"])}
        missing = {"name", "family", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_dim",
                   "vocab_size", "max_position_embeddings"} - set(d)
        if missing:
            raise ModelError(f"{where}: missing {sorted(missing)[0]!r}")
        values = {k: v for k, v in d.items() if k in fields}
        check_fields(values, where)
        return cls(**values)

    def with_(self, **changes) -> "ModelSpec":
        return replace(self, **changes)

    @classmethod
    def from_hf_config(cls, path: str | os.PathLike, label: str | None = None) -> "ModelSpec":
        """Read a Hugging Face ``config.json`` (model_type opt, llama, mistral, qwen2, mixtral,
        qwen2_moe, deepseek_v2, deepseek_v3). Every message names ``label`` (the flag, e.g.
        ``--model``) and the file."""
        return _from_hf_config(Path(path), label)


FAMILIES = ("opt", "llama", "mistral", "qwen2", "mixtral", "qwen2_moe", "deepseek_v2", "deepseek_v3")

# Sizes are indices of torch tensors and of the executor's files: int32 is the bound.
MAX_DIM = 2**31 - 1
_INT_FIELDS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "ffn_dim", "vocab_size",
               "max_position_embeddings", "num_experts", "experts_per_token")
_CHECKED = ("name", "family", *_INT_FIELDS, "head_dim", "tie_word_embeddings", "rope_theta", "norm_eps", "dtype")


def check_int(value, label: str, minimum: int = 1) -> int:
    """``value`` as a dimension: an int (not bool) in minimum..MAX_DIM; ModelError naming ``label``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ModelError(f"{label} must be {what}, got {value!r}")
    if value > MAX_DIM:
        raise ModelError(f"{label} must be at most {MAX_DIM} (2**31 - 1), got {value!r}")
    return value


def check_positive_number(value, label: str) -> float:
    from simulator.units import finite_float
    f = finite_float(value)
    if f is None or f <= 0:
        raise ModelError(f"{label} must be a finite number > 0, got {value!r}")
    return f


def check_fields(values: dict, where: str, names: dict | None = None) -> None:
    """Check the ModelSpec fields present in ``values``; a message reads ``"{where}: {key}
    ..."`` with ``names[field]`` as the key (a config.json's own key names), else the field."""
    key = (lambda f: (names or {}).get(f, f))  # noqa: E731
    if "name" in values and (not isinstance(values["name"], str) or not values["name"]):
        raise ModelError(f"{where}: name must be a non-empty string, got {values['name']!r}")
    if "family" in values and (not isinstance(values["family"], str) or values["family"] not in FAMILIES):
        raise ModelError(f"{where}: {key('family')} {values['family']!r} is not one of {', '.join(FAMILIES)}")
    for f in _INT_FIELDS:
        if f in values:
            check_int(values[f], f"{where}: {key(f)}")
    if "head_dim" in values:
        check_int(values["head_dim"], f"{where}: {key('head_dim')}", minimum=0)
    for f in ("rope_theta", "norm_eps"):
        if f in values:
            check_positive_number(values[f], f"{where}: {key(f)}")
    if "tie_word_embeddings" in values and not isinstance(values["tie_word_embeddings"], bool):
        raise ModelError(f"{where}: {key('tie_word_embeddings')} must be true or false, "
                         f"got {values['tie_word_embeddings']!r}")
    if "dtype" in values and (not isinstance(values["dtype"], str) or values["dtype"] not in DTYPE_BYTES):
        raise ModelError(f"{where}: {key('dtype')} {values['dtype']!r} is not one of {', '.join(DTYPE_BYTES)}")
    h, heads, kv = values.get("hidden_size"), values.get("num_heads"), values.get("num_kv_heads")
    if h is not None and heads is not None and not values.get("head_dim") and h < heads:
        raise ModelError(f"{where}: {key('hidden_size')} {h} is smaller than {key('num_heads')} {heads} "
                         "(each head needs hidden_size / heads >= 1 dimensions)")
    if heads is not None and kv is not None and heads % kv:
        raise ModelError(f"{where}: {key('num_heads')} {heads} is not a multiple of {key('num_kv_heads')} {kv}")
    e, k = values.get("num_experts"), values.get("experts_per_token")
    if e is not None and k is not None and k > e:
        raise ModelError(f"{where}: {key('experts_per_token')} {k} exceeds {key('num_experts')} {e}")



def _opt(name, h, layers, heads, ffn, hf):
    return ModelSpec(name=name, family="opt", hidden_size=h, num_layers=layers, num_heads=heads,
                     num_kv_heads=heads, ffn_dim=ffn, vocab_size=50272, max_position_embeddings=2048,
                     tie_word_embeddings=True, dtype="fp16", hf_ids=(hf,))


def _llama(name, family, h, layers, heads, kv, ffn, vocab, max_pos, theta, dtype, hf, eps=1e-5, **kw):
    return ModelSpec(name=name, family=family, hidden_size=h, num_layers=layers, num_heads=heads,
                     num_kv_heads=kv, ffn_dim=ffn, vocab_size=vocab, max_position_embeddings=max_pos,
                     rope_theta=theta, norm_eps=eps, dtype=dtype, hf_ids=hf, **kw)


# Shapes from the models' published config.json files on the Hugging Face hub.
PRESETS: dict[str, ModelSpec] = {m.name: m for m in (
    _opt("opt-125m", 768, 12, 12, 3072, "facebook/opt-125m"),
    _opt("opt-1.3b", 2048, 24, 32, 8192, "facebook/opt-1.3b"),
    _opt("opt-2.7b", 2560, 32, 32, 10240, "facebook/opt-2.7b"),
    _opt("opt-6.7b", 4096, 32, 32, 16384, "facebook/opt-6.7b"),
    _opt("opt-13b", 5120, 40, 40, 20480, "facebook/opt-13b"),
    _opt("opt-30b", 7168, 48, 56, 28672, "facebook/opt-30b"),
    _opt("opt-66b", 9216, 64, 72, 36864, "facebook/opt-66b"),
    _opt("opt-175b", 12288, 96, 96, 49152, "facebook/opt-175b"),
    _llama("llama-2-7b", "llama", 4096, 32, 32, 32, 11008, 32000, 4096, 10000.0, "fp16",
           ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf")),
    _llama("llama-2-13b", "llama", 5120, 40, 40, 40, 13824, 32000, 4096, 10000.0, "fp16",
           ("meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-13b-chat-hf")),
    _llama("llama-2-70b", "llama", 8192, 80, 64, 8, 28672, 32000, 4096, 10000.0, "fp16",
           ("meta-llama/Llama-2-70b-hf", "meta-llama/Llama-2-70b-chat-hf")),
    _llama("llama-3-8b", "llama", 4096, 32, 32, 8, 14336, 128256, 8192, 500000.0, "bf16",
           ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct"), eps=1e-5),
    _llama("llama-3-70b", "llama", 8192, 80, 64, 8, 28672, 128256, 8192, 500000.0, "bf16",
           ("meta-llama/Meta-Llama-3-70B", "meta-llama/Meta-Llama-3-70B-Instruct"), eps=1e-5),
    _llama("llama-3.1-405b", "llama", 16384, 126, 128, 8, 53248, 128256, 131072, 500000.0, "bf16",
           ("meta-llama/Llama-3.1-405B", "meta-llama/Meta-Llama-3.1-405B", "meta-llama/Llama-3.1-405B-Instruct")),
    _llama("mistral-7b", "mistral", 4096, 32, 32, 8, 14336, 32000, 32768, 10000.0, "bf16",
           ("mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.1")),
    _llama("mixtral-8x7b", "mixtral", 4096, 32, 32, 8, 14336, 32000, 32768, 1000000.0, "bf16",
           ("mistralai/Mixtral-8x7B-v0.1", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
           num_experts=8, experts_per_token=2),
    # Qwen1.5-MoE-A2.7B: 60 routed experts of 1408 (4 per token) and a gated shared expert of 5632.
    _llama("qwen1.5-moe-a2.7b", "qwen2_moe", 2048, 24, 16, 16, 1408, 151936, 8192, 1000000.0, "bf16",
           ("Qwen/Qwen1.5-MoE-A2.7B", "Qwen/Qwen1.5-MoE-A2.7B-Chat"), eps=1e-6,
           num_experts=60, experts_per_token=4, shared_expert_dim=5632, shared_expert_gate=True),
    # DeepSeek-V2: MLA (latent 512 + rope 64), 160 routed experts of 1536 (6 per token), 2 shared,
    # the first layer dense (12288).
    _llama("deepseek-v2", "deepseek_v2", 5120, 60, 128, 1, 1536, 102400, 163840, 10000.0, "bf16",
           ("deepseek-ai/DeepSeek-V2", "deepseek-ai/DeepSeek-V2-Chat"), eps=1e-6, head_dim=192,
           num_experts=160, experts_per_token=6, shared_expert_dim=2 * 1536, dense_layers=(0,),
           dense_ffn_dim=12288, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128),
    # DeepSeek-V3: 256 routed experts of 2048 (8 per token), 1 shared, the first 3 layers dense
    # (18432), a score-correction bias per expert; the multi-token-prediction module is not counted.
    _llama("deepseek-v3", "deepseek_v3", 7168, 61, 128, 1, 2048, 129280, 163840, 10000.0, "bf16",
           ("deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-V3-Base"), eps=1e-6, head_dim=192,
           num_experts=256, experts_per_token=8, shared_expert_dim=2048, dense_layers=(0, 1, 2),
           dense_ffn_dim=18432, moe_router_bias=True, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
           v_head_dim=128),
    # PaLM (arXiv 2204.02311): multi-query attention (one K/V head of 256), SwiGLU, rotary positions,
    # shared input/output embeddings, attention and MLP in parallel. Shapes: google-research
    # scaling_transformer_inference_efficiency/checkpoint.py HParams @ 18c44597 and arXiv 2211.05102
    # Table D.1 (shared/data/layouts/model_shapes.csv); the 64-head 540B is the paper's padding for
    # 64+ chips (section 4). No position table: contexts up to 32 x the 2048 of training (its abstract).
    *(_llama(name, "llama", h, layers, heads, 1, ffn, 256128, 65536, 10000.0, "bf16", (), head_dim=256,
             tie_word_embeddings=True, parallel_block=True)
      for name, h, layers, heads, ffn in (("palm-8b", 4096, 32, 16, 16384), ("palm-62b", 8192, 64, 32, 32768),
                                          ("palm-540b", 18432, 118, 48, 73728),
                                          ("palm-540b-64h", 18432, 118, 64, 73728))),
)}

_ALIASES = {hf.lower(): m.name for m in PRESETS.values() for hf in m.hf_ids}


def list_models() -> list[str]:
    return list(PRESETS)


def get_model(name_or_path: str, label: str = "--model") -> ModelSpec:
    """A preset by name (case-insensitive), a Hugging Face id, or a path to a config.json
    (or to a folder holding one). Messages name ``label`` (the flag) and the path."""
    from simulator.files import stat_path
    key = str(name_or_path).strip()
    low = key.lower()
    if low in PRESETS:
        return PRESETS[low]
    if low in _ALIASES:
        return PRESETS[_ALIASES[low]]
    st = stat_path(key, label, ModelError) if key else None
    if st is not None and stat.S_ISDIR(st.st_mode):
        inner = os.path.join(key, "config.json")
        if stat_path(inner, label, ModelError) is None:
            raise ModelError(f"{label} {key!r}: a folder without a config.json")
        return ModelSpec.from_hf_config(inner, label)
    if st is not None or key.endswith(".json"):
        return ModelSpec.from_hf_config(key, label)
    raise ModelError(f"{label}: unknown model {key!r} (presets: {', '.join(PRESETS)}; "
                     "or a Hugging Face id of one, or a path to a config.json)")


_REQUIRED = {
    "opt": ("hidden_size", "num_hidden_layers", "num_attention_heads", "ffn_dim", "vocab_size",
            "max_position_embeddings"),
    "llama": ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"),
}
_REQUIRED["mistral"] = _REQUIRED["qwen2"] = _REQUIRED["llama"]
_REQUIRED["mixtral"] = _REQUIRED["llama"] + ("num_local_experts", "num_experts_per_tok")
_REQUIRED["qwen2_moe"] = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "num_experts",
                          "num_experts_per_tok", "moe_intermediate_size")
_REQUIRED["deepseek_v2"] = _REQUIRED["deepseek_v3"] = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
    "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok", "kv_lora_rank", "qk_rope_head_dim",
    "qk_nope_head_dim", "v_head_dim")


def _from_hf_config(path: Path, label: str | None = "--model") -> ModelSpec:
    from simulator.files import load_json, read_text, shown
    where = f"{label} {shown(str(path))}" if label else shown(str(path))
    cfg = load_json(read_text(path, label, ModelError), where, ModelError)
    if not isinstance(cfg, dict):
        raise ModelError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    mtype = cfg.get("model_type")
    if not isinstance(mtype, str) or mtype not in _REQUIRED:
        raise ModelError(f"{where}: model_type {mtype!r} is not supported (supported: {', '.join(_REQUIRED)})")
    for key in _REQUIRED[mtype]:
        if key not in cfg:
            raise ModelError(f"{where}: missing {key!r} (required for model_type {mtype!r})")
    raw_dtype = cfg.get("torch_dtype", cfg.get("dtype"))
    raw_dtype = "float16" if raw_dtype is None else raw_dtype
    dtype = _HF_DTYPES.get(raw_dtype) if isinstance(raw_dtype, str) else None
    if dtype is None:
        raise ModelError(f"{where}: torch_dtype {raw_dtype!r} is not one of {', '.join(_HF_DTYPES)}")
    name = str(cfg.get("_name_or_path") or path.parent.name or path.stem) or "model"

    def opt(key, default):
        """An optional key; null means "not given", as in transformers' configs."""
        value = cfg.get(key)
        return default if value is None else value

    if mtype in _MOE_IMPORTERS:
        return _MOE_IMPORTERS[mtype](where, cfg, name, dtype)
    if mtype == "opt":
        for key in ("do_layer_norm_before", "tie_word_embeddings"):
            if not isinstance(opt(key, True), bool):
                raise ModelError(f"{where}: {key} must be true or false, got {cfg[key]!r}")
        if not opt("do_layer_norm_before", True):
            raise ModelError(f"{where}: do_layer_norm_before=false (post-LayerNorm OPT, e.g. opt-350m) "
                             "is not supported")
        wepd = opt("word_embed_proj_dim", cfg["hidden_size"])
        if wepd != cfg["hidden_size"] or isinstance(wepd, bool):
            raise ModelError(f"{where}: word_embed_proj_dim {wepd!r} != hidden_size {cfg['hidden_size']!r} "
                             "is not supported")
        values = dict(name=name, family="opt", hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                      num_heads=cfg["num_attention_heads"], num_kv_heads=cfg["num_attention_heads"],
                      ffn_dim=cfg["ffn_dim"], vocab_size=cfg["vocab_size"],
                      max_position_embeddings=cfg["max_position_embeddings"],
                      tie_word_embeddings=opt("tie_word_embeddings", True), dtype=dtype)
        names = dict(_HF_NAMES, ffn_dim="ffn_dim", num_kv_heads="num_attention_heads")
    else:
        heads = cfg["num_attention_heads"]
        values = dict(name=name, family=mtype, hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                      num_heads=heads, num_kv_heads=opt("num_key_value_heads", heads),
                      ffn_dim=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
                      max_position_embeddings=opt("max_position_embeddings", 4096), head_dim=opt("head_dim", 0),
                      tie_word_embeddings=opt("tie_word_embeddings", False),
                      num_experts=opt("num_local_experts", 1), experts_per_token=opt("num_experts_per_tok", 1),
                      rope_theta=opt("rope_theta", 10000.0), norm_eps=opt("rms_norm_eps", 1e-5), dtype=dtype)
        if "head_dim" in cfg and cfg["head_dim"] is not None:
            check_int(cfg["head_dim"], f"{where}: head_dim")  # 0 is the field's "derive it", not a config value
        names = _HF_NAMES
    check_fields(values, where, names)
    values["rope_theta"] = float(values.get("rope_theta", 10000.0))
    values["norm_eps"] = float(values.get("norm_eps", 1e-5))
    return ModelSpec(**values)


# The config.json key of each ModelSpec field (for messages about a config.json).
_HF_NAMES = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
             "num_kv_heads": "num_key_value_heads", "ffn_dim": "intermediate_size",
             "num_experts": "num_local_experts", "experts_per_token": "num_experts_per_tok",
             "norm_eps": "rms_norm_eps", "dtype": "torch_dtype"}


def _int_field(where: str, cfg: dict, key: str, default=None, minimum: int = 0) -> int:
    """An integer field of a config.json (``default`` when absent or null), at least ``minimum``."""
    value = cfg.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _layer_list(where: str, cfg: dict, key: str, num_layers: int) -> list[int]:
    value = cfg.get(key) or []
    if not isinstance(value, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < num_layers
                                          for i in value):
        raise ModelError(f"{where}: {key} must be a list of layer indices in 0..{num_layers - 1}, got {value!r}")
    return value


def _moe_common(where: str, cfg: dict, experts_key: str) -> tuple[int, int, int]:
    """(layers, routed experts, experts per token), checked against each other."""
    layers = _int_field(where, cfg, "num_hidden_layers", minimum=1)
    experts = _int_field(where, cfg, experts_key, minimum=0)
    k = _int_field(where, cfg, "num_experts_per_tok", minimum=1)
    if experts < 2:
        raise ModelError(f"{where}: {experts_key} {experts} leaves no routed experts (a mixture of experts needs "
                         "at least 2; a dense model is model_type llama or qwen2)")
    if k > experts:
        raise ModelError(f"{where}: num_experts_per_tok {k} exceeds {experts_key} {experts}")
    return layers, experts, k


def _qwen2_moe(where: str, cfg: dict, name: str, dtype: str) -> ModelSpec:
    """Qwen2-MoE (HF Qwen2MoeConfig): layer i has experts unless it is in ``mlp_only_layers``
    or ``(i + 1) % decoder_sparse_step != 0``; those have a dense MLP of ``intermediate_size``.
    Every expert layer has ``num_experts`` routed experts of ``moe_intermediate_size`` and one
    shared expert of ``shared_expert_intermediate_size`` behind a (1, hidden) sigmoid gate."""
    layers, experts, k = _moe_common(where, cfg, "num_experts")
    step = _int_field(where, cfg, "decoder_sparse_step", 1, minimum=1)
    only = set(_layer_list(where, cfg, "mlp_only_layers", layers))
    dense = tuple(i for i in range(layers) if i in only or (i + 1) % step)
    if len(dense) == layers:
        raise ModelError(f"{where}: mlp_only_layers and decoder_sparse_step {step} leave no expert layer")
    shared = _int_field(where, cfg, "shared_expert_intermediate_size", 0)
    heads = cfg["num_attention_heads"]
    return ModelSpec(
        name=name, family="qwen2_moe", hidden_size=cfg["hidden_size"], num_layers=layers, num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads, ffn_dim=_int_field(where, cfg, "moe_intermediate_size"),
        vocab_size=cfg["vocab_size"], max_position_embeddings=cfg.get("max_position_embeddings", 4096),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), num_experts=experts, experts_per_token=k,
        rope_theta=float(cfg.get("rope_theta", 10000.0)), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        dtype=dtype, shared_expert_dim=shared, shared_expert_gate=shared > 0, dense_layers=dense,
        dense_ffn_dim=_int_field(where, cfg, "intermediate_size", minimum=1) if dense else 0)


def _deepseek(where: str, cfg: dict, name: str, dtype: str) -> ModelSpec:
    """DeepSeek-V2/V3 (HF DeepseekV2Config/DeepseekV3Config): MLA attention, and experts in
    layer i when ``i >= first_k_dense_replace`` and ``i % moe_layer_freq == 0`` (the other
    layers: a dense MLP of ``intermediate_size``); ``n_shared_experts`` shared experts of
    ``moe_intermediate_size`` each. ``num_key_value_heads`` is ignored: MLA caches one latent
    for all heads."""
    mtype = cfg["model_type"]
    layers, experts, k = _moe_common(where, cfg, "n_routed_experts")
    first = _int_field(where, cfg, "first_k_dense_replace", 0)
    freq = _int_field(where, cfg, "moe_layer_freq", 1, minimum=1)
    dense = tuple(i for i in range(layers) if i < first or i % freq)
    if len(dense) == layers:
        raise ModelError(f"{where}: first_k_dense_replace {first} and moe_layer_freq {freq} leave no expert layer")
    f = _int_field(where, cfg, "moe_intermediate_size", minimum=1)
    rope = _int_field(where, cfg, "qk_rope_head_dim", minimum=1)
    nope = _int_field(where, cfg, "qk_nope_head_dim", minimum=1)
    return ModelSpec(
        name=name, family=mtype, hidden_size=cfg["hidden_size"], num_layers=layers,
        num_heads=cfg["num_attention_heads"], num_kv_heads=1, ffn_dim=f, vocab_size=cfg["vocab_size"],
        max_position_embeddings=cfg.get("max_position_embeddings", 4096), head_dim=nope + rope,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)), num_experts=experts, experts_per_token=k,
        rope_theta=float(cfg.get("rope_theta", 10000.0)), norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        dtype=dtype, shared_expert_dim=_int_field(where, cfg, "n_shared_experts", 0) * f, dense_layers=dense,
        dense_ffn_dim=_int_field(where, cfg, "intermediate_size", minimum=1), moe_router_bias=mtype == "deepseek_v3",
        kv_lora_rank=_int_field(where, cfg, "kv_lora_rank", minimum=1),
        q_lora_rank=_int_field(where, cfg, "q_lora_rank", 0), qk_rope_head_dim=rope,
        v_head_dim=_int_field(where, cfg, "v_head_dim", minimum=1))


_MOE_IMPORTERS = {"qwen2_moe": _qwen2_moe, "deepseek_v2": _deepseek, "deepseek_v3": _deepseek}
