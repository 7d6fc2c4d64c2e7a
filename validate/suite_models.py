"""The small models the CPU suites run (``llmsim validate --suite ci`` and ``--suite serving``,
and the tests that exercise the same executor paths): data, no torch."""

from __future__ import annotations

from simulator.models import ModelSpec


def ci_model_sets() -> dict[str, list[ModelSpec]]:
    """Two pairs of suite models, an OPT and a grouped-query-attention Llama each, in fp32:
    ``large`` (OPT-125M and a Llama of its width, ~400-500 MB of weights per step) and
    ``small`` (width 512, 8 layers, 8k vocabulary, ~100 MB)."""
    from simulator.models import get_model
    llama = ModelSpec(name="llama-mini", family="llama", hidden_size=768, num_layers=12, num_heads=12,
                      num_kv_heads=4, ffn_dim=2048, vocab_size=32000, max_position_embeddings=2048, dtype="fp32")
    opt_s = ModelSpec(name="opt-mini", family="opt", hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=8,
                      ffn_dim=2048, vocab_size=8192, max_position_embeddings=2048, tie_word_embeddings=True,
                      dtype="fp32")
    llama_s = ModelSpec(name="llama-tiny", family="llama", hidden_size=512, num_layers=8, num_heads=8,
                        num_kv_heads=2, ffn_dim=1408, vocab_size=8192, max_position_embeddings=2048, dtype="fp32")
    return {"large": [get_model("opt-125m").with_(dtype="fp32"), llama], "small": [opt_s, llama_s]}


def ci_moe_models() -> dict[str, ModelSpec]:
    """Mixtral-style stand-ins beside each pair (same keys), for the CI suite's expert cases:
    8 experts of which 2 run per token, the width of the pair's Llama, in fp32. ``large``:
    6 layers, tied 32k vocabulary, ~480 MB of weights (the pair's per-step stream); ``small``:
    4 layers, 8k vocabulary, ~150 MB."""
    large = ModelSpec(name="mixtral-mini", family="mixtral", hidden_size=768, num_layers=6, num_heads=12,
                      num_kv_heads=4, ffn_dim=768, vocab_size=32000, max_position_embeddings=2048,
                      tie_word_embeddings=True, num_experts=8, experts_per_token=2, dtype="fp32")
    small = ModelSpec(name="mixtral-tiny", family="mixtral", hidden_size=512, num_layers=4, num_heads=8,
                      num_kv_heads=2, ffn_dim=512, vocab_size=8192, max_position_embeddings=2048, num_experts=8,
                      experts_per_token=2, dtype="fp32")
    return {"large": large, "small": small}
