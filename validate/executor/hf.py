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
    if spec.family not in ("llama", "mistral", "qwen2"):
        raise UnsupportedModelError(f"model {spec.name}: no Hugging Face reference for family {spec.family!r}")
    out = {"model_type": "qwen2" if spec.family == "qwen2" else "llama", "hidden_size": spec.hidden_size,
           "intermediate_size": spec.ffn_dim, "num_hidden_layers": spec.num_layers,
           "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
           "head_dim": spec.head_dim, "vocab_size": spec.vocab_size,
           "max_position_embeddings": spec.max_position_embeddings, "rope_theta": spec.rope_theta,
           "rms_norm_eps": spec.norm_eps, "tie_word_embeddings": spec.tie_word_embeddings, "hidden_act": "silu",
           "attention_dropout": 0.0}
    if spec.family != "qwen2":
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
    }[kind]
    config = config_cls(**cfg)
    config._attn_implementation = "eager"
    model = model_cls(config).eval().to(torch.float32)
    weights = state_dict(spec, seed, checkpoint)
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in weights and not (spec.tie_word_embeddings and n == "lm_head.weight")]
    if missing:
        raise UnsupportedModelError(f"model {spec.name}: HF parameters without an executor tensor: {missing[:3]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    return model
