"""The Hugging Face transformers model equal to a ModelSpec (the reference of the equivalence tests)."""

from __future__ import annotations

import torch

from simulator.models import ModelSpec
from validate.executor.errors import UnsupportedModelError
from validate.executor.weights import state_dict


def hf_config_dict(spec: ModelSpec) -> dict:
    """config.json fields of the HF model with the same architecture (eager attention, no dropout)."""
    if spec.is_opt:
        return {"model_type": "opt", "hidden_size": spec.hidden_size, "num_hidden_layers": spec.num_layers,
                "num_attention_heads": spec.num_heads, "ffn_dim": spec.ffn_dim, "vocab_size": spec.vocab_size,
                "max_position_embeddings": spec.max_position_embeddings, "word_embed_proj_dim": spec.hidden_size,
                "do_layer_norm_before": True, "enable_bias": True, "layer_norm_elementwise_affine": True,
                "activation_function": "relu", "dropout": 0.0, "attention_dropout": 0.0,
                "tie_word_embeddings": spec.tie_word_embeddings, "pad_token_id": 1}
    if spec.family not in ("llama", "mistral", "qwen2", "mixtral"):
        raise UnsupportedModelError(f"model {spec.name}: no Hugging Face reference for family {spec.family!r}")
    kind = {"qwen2": "qwen2", "mixtral": "mixtral"}.get(spec.family, "llama")
    out = {"model_type": kind, "hidden_size": spec.hidden_size,
           "intermediate_size": spec.ffn_dim, "num_hidden_layers": spec.num_layers,
           "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
           "head_dim": spec.head_dim, "vocab_size": spec.vocab_size,
           "max_position_embeddings": spec.max_position_embeddings, "rope_theta": spec.rope_theta,
           "rms_norm_eps": spec.norm_eps, "tie_word_embeddings": spec.tie_word_embeddings, "hidden_act": "silu",
           "attention_dropout": 0.0}
    if spec.family == "mixtral":
        out.update(num_local_experts=spec.num_experts, num_experts_per_tok=spec.experts_per_token,
                   router_jitter_noise=0.0, sliding_window=None)
    elif spec.family != "qwen2":
        out.update(attention_bias=False, mlp_bias=False)
    return out


def hf_model(spec: ModelSpec, seed: int = 0, checkpoint: str | None = None):
    """The transformers CausalLM of ``spec`` in fp32, holding the executor's weights (copied by name)."""
    import transformers

    cfg = hf_config_dict(spec)
    kind = cfg.pop("model_type")
    config_cls, model_cls = {
        "opt": (transformers.OPTConfig, transformers.OPTForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM),
    }[kind]
    config = config_cls(**cfg)
    config._attn_implementation = "eager"
    if kind == "mixtral":
        config._experts_implementation = "eager"  # the per-expert loop, not grouped GEMMs
    model = model_cls(config).eval().to(torch.float32)
    weights = state_dict(spec, seed, checkpoint)
    if kind == "mixtral":
        weights = _fused_experts(spec, weights)
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in weights and not (spec.tie_word_embeddings and n == "lm_head.weight")]
    if missing:
        raise UnsupportedModelError(f"model {spec.name}: HF parameters without an executor tensor: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return model


def _fused_experts(spec: ModelSpec, weights: dict) -> dict:
    """Checkpoint names (``block_sparse_moe.experts.<e>.w1/w3/w2``, ``block_sparse_moe.gate``)
    -> transformers 5's Mixtral modules: ``mlp.gate.weight`` and, per layer, the experts
    stacked as ``mlp.experts.gate_up_proj`` (E, 2f, h) = [w1; w3] and ``down_proj`` (E, h, f)."""
    out = {k: v for k, v in weights.items() if ".block_sparse_moe." not in k}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        m = p + "block_sparse_moe."
        out[p + "mlp.gate.weight"] = weights[m + "gate.weight"]
        out[p + "mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([weights[f"{m}experts.{e}.w1.weight"], weights[f"{m}experts.{e}.w3.weight"]])
             for e in range(spec.num_experts)])
        out[p + "mlp.experts.down_proj"] = torch.stack(
            [weights[f"{m}experts.{e}.w2.weight"] for e in range(spec.num_experts)])
    return out
