"""ModelSpec: the architecture of a decoder-only transformer, with derived bytes and FLOPs.

Presets cover OPT, Llama-2/3, Mistral and Mixtral; ``ModelSpec.from_hf_config`` reads a
Hugging Face ``config.json``. The executor builds its torch modules from the same spec and a
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
    # Attention and MLP read the same normed input and their outputs are summed (GPT-J, PaLM:
    # "parallel formulation", arXiv 2204.02311 section 2): one tensor-parallel reduction per layer.
    parallel_block: bool = False

    def __post_init__(self):
        check_fields({f: getattr(self, f) for f in _CHECKED}, f"model {self.name}")
        if self.head_dim == 0:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if not isinstance(self.parallel_block, bool):
            raise ModelError(f"model {self.name}: parallel_block must be true or false, got {self.parallel_block!r}")

    # ----------------------------------------------------------------- structure
    @property
    def is_opt(self) -> bool:
        return self.family == "opt"

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 1

    @property
    def q_dim(self) -> int:
        """Width of the query projection: num_heads x head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections: num_kv_heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    @functools.lru_cache(maxsize=None)
    def layer_tensors(self) -> tuple[TensorSpec, ...]:
        """The parameter tensors of one decoder layer, in the order the executor places them."""
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
        out = [
            t("input_layernorm.weight", (h,)),
            t("self_attn.q_proj.weight", (self.q_dim, h)),
            t("self_attn.k_proj.weight", (self.kv_dim, h)),
            t("self_attn.v_proj.weight", (self.kv_dim, h)),
        ]
        if self.family == "qwen2":
            out += [t("self_attn.q_proj.bias", (self.q_dim,)), t("self_attn.k_proj.bias", (self.kv_dim,)),
                    t("self_attn.v_proj.bias", (self.kv_dim,))]
        out += [t("self_attn.o_proj.weight", (h, self.q_dim)), t("post_attention_layernorm.weight", (h,))]
        if self.is_moe:
            out.append(t("block_sparse_moe.gate.weight", (self.num_experts, h)))
            for e in range(self.num_experts):
                p = f"block_sparse_moe.experts.{e}."
                out += [t(p + "w1.weight", (f, h)), t(p + "w3.weight", (f, h)), t(p + "w2.weight", (h, f))]
        else:
            out += [t("mlp.gate_proj.weight", (f, h)), t("mlp.up_proj.weight", (f, h)),
                    t("mlp.down_proj.weight", (h, f))]
        return tuple(out)

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
        return self.num_layers * self.layer_parameters() + self.head_parameters()

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
        return self.num_layers * self.layer_weight_bytes(fmt) + self.head_weight_bytes(fmt)

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
        """
        if compressed:
            return 2 * self.num_kv_heads * compression.packed_bytes(1, self.head_dim)
        return 2 * self.kv_dim * DTYPE_BYTES[dtype or self.dtype]

    # ----------------------------------------------------------------- FLOPs
    @functools.lru_cache(maxsize=None)
    def matmul_flop_per_token(self) -> int:
        """GEMM FLOPs of one layer for one token: 2 x (active matrix parameters).

        MoE: the router plus ``experts_per_token`` experts (Mixtral, arXiv 2401.04088).
        Biases and norms are not GEMM work and are left out.
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
            **({"parallel_block": True} if self.parallel_block else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "model") -> "ModelSpec":
        """Inverse of ``to_dict`` (derived keys such as num_parameters are ignored). Every
        message names ``where`` (e.g. a record file and its key) and the field."""
        if not isinstance(d, dict):
            raise ModelError(f"{where}: expected a mapping, got {type(d).__name__}")
        fields = {f for f in cls.__dataclass_fields__ if f != "hf_ids"}
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
        """Read a Hugging Face ``config.json`` (model_type opt, llama, mistral, qwen2, mixtral).
        Every message names ``label`` (the flag, e.g. ``--model``) and the file."""
        return _from_hf_config(Path(path), label)


FAMILIES = ("opt", "llama", "mistral", "qwen2", "mixtral")

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
