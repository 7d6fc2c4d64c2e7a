"""ModelSpec: presets, config.json parsing, and derived bytes and FLOPs checked by hand."""

import json

import pytest

from simulator.errors import ModelError
from simulator.models import PRESETS, ModelSpec, get_model


@pytest.mark.parametrize("name,params", [("opt-175b", 175e9), ("llama-2-70b", 68.98e9), ("mixtral-8x7b", 46.7e9),
                                         ("opt-125m", 125.2e6), ("llama-2-7b", 6.738e9), ("llama-3-8b", 8.03e9),
                                         ("mistral-7b", 7.24e9), ("llama-3.1-405b", 405.85e9)])
def test_parameter_counts_match_published(name, params):
    assert get_model(name).num_parameters() == pytest.approx(params, rel=0.01)


def test_opt_125m_count_by_hand():
    # h=768, ffn=3072, 12 layers, vocab 50272, 2048+2 positions, tied LM head.
    h, f = 768, 3072
    per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # q,k,v,out (+bias), fc1, fc2 (+bias), 2 LN
    head = 50272 * h + 2050 * h + 2 * h
    assert get_model("opt-125m").num_parameters() == 12 * per_layer + head == 125_239_296


def test_llama_gqa_layer_count_by_hand():
    m = get_model("llama-2-70b")  # h 8192, 64 heads, 8 kv heads of 128, ffn 28672
    h, kv, f = 8192, 8 * 128, 28672
    assert m.layer_parameters() == 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h


@pytest.mark.parametrize("alias,name", [("facebook/opt-30b", "opt-30b"), ("OPT-30B", "opt-30b"),
                                        ("meta-llama/Llama-2-7b-hf", "llama-2-7b"),
                                        ("mistralai/Mixtral-8x7B-v0.1", "mixtral-8x7b"),
                                        ("meta-llama/Meta-Llama-3-70B", "llama-3-70b")])
def test_names_and_hf_ids(alias, name):
    assert get_model(alias).name == name


def test_unknown_model_error_names_flag():
    with pytest.raises(ModelError, match=r"--model: unknown model 'gpt-9'"):
        get_model("gpt-9")


def test_weight_bytes_by_format():
    m = get_model("opt-6.7b")
    layer = m.layer_parameters()
    assert m.layer_weight_bytes("fp16") == 2 * layer
    assert m.layer_weight_bytes("bf16") == 2 * layer
    # int8: 1 byte per matrix element + an fp16 scale per row; vectors stay fp16.
    h, f = 4096, 16384
    mats = [(h, h)] * 4 + [(f, h), (h, f)]
    vec = layer - sum(r * c for r, c in mats)
    assert m.layer_weight_bytes("int8") == sum(r * c + 2 * r for r, c in mats) + 2 * vec
    # int4 group 64: 32 bytes of codes + 2 (min) + 2 (scale) per 64 values.
    assert m.layer_weight_bytes("int4") == sum(r * (c // 64) * 36 for r, c in mats) + 2 * vec
    assert m.layer_weight_bytes("int4") / m.layer_weight_bytes("fp16") == pytest.approx(36 / 128, rel=0.01)


def test_kv_bytes_per_token_is_gqa_aware():
    assert get_model("llama-2-70b").kv_bytes_per_token("fp16") == 2 * 8 * 128 * 2  # 4 KiB
    assert get_model("llama-2-7b").kv_bytes_per_token("fp16") == 2 * 32 * 128 * 2
    assert get_model("opt-30b").kv_bytes_per_token("fp16") == 2 * 7168 * 2
    # 4-bit: head_dim 128 -> 2 groups of 36 bytes per head, for K and V.
    assert get_model("llama-2-70b").kv_bytes_per_token(compressed=True) == 2 * 8 * 2 * 36


def test_flops_by_hand():
    m = get_model("opt-1.3b")  # h 2048, ffn 8192
    h, f = 2048, 8192
    per_tok = 2 * (4 * h * h + 2 * h * f)
    assert m.matmul_flop_per_token() == per_tok
    s = 100
    assert m.layer_flop_prefill(s) == s * per_tok + 2 * s * (s + 1) * h
    assert m.layer_flop_decode(357) == per_tok + 4 * 357 * h
    assert m.head_flop_per_token() == 2 * h * 50272


def test_moe_counts_active_flops_but_all_bytes():
    m = get_model("mixtral-8x7b")
    h, f, E, k = 4096, 14336, 8, 2
    attn = h * h * 2 + 2 * h * 1024
    assert m.matmul_flop_per_token() == 2 * (attn + h * E + k * 3 * h * f)
    assert m.layer_parameters() == attn + h * E + E * 3 * h * f + 2 * h
    dense_equiv = m.with_(num_experts=1, experts_per_token=1, family="mistral")
    assert m.matmul_flop_per_token() - dense_equiv.matmul_flop_per_token() == 2 * (h * E + 3 * h * f)


def _write(tmp_path, cfg):
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_from_hf_config_llama(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
           "max_position_embeddings": 4096, "torch_dtype": "float16", "rms_norm_eps": 1e-5}
    m = ModelSpec.from_hf_config(_write(tmp_path, cfg))
    assert m.num_parameters() == PRESETS["llama-2-7b"].num_parameters()
    assert get_model(str(tmp_path)).num_parameters() == m.num_parameters()  # a folder holding config.json


def test_from_hf_config_opt_mixtral_qwen2(tmp_path):
    opt = {"model_type": "opt", "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
           "ffn_dim": 3072, "vocab_size": 50272, "max_position_embeddings": 2048, "word_embed_proj_dim": 768,
           "do_layer_norm_before": True, "torch_dtype": "float16"}
    assert ModelSpec.from_hf_config(_write(tmp_path, opt)).num_parameters() == 125_239_296
    mix = {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
           "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
           "num_experts_per_tok": 2, "torch_dtype": "bfloat16", "max_position_embeddings": 32768}
    assert ModelSpec.from_hf_config(_write(tmp_path, mix)).num_parameters() == PRESETS["mixtral-8x7b"].num_parameters()
    qwen = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
            "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
            "torch_dtype": "bfloat16", "max_position_embeddings": 32768}
    # Qwen2-0.5B: 494,032,768 parameters (q/k/v biases, tied embeddings).
    assert ModelSpec.from_hf_config(_write(tmp_path, qwen)).num_parameters() == 494_032_768


@pytest.mark.parametrize("cfg,match", [
    ({"model_type": "gpt2"}, r"model_type 'gpt2' is not supported"),
    ({"model_type": "llama", "hidden_size": 64}, r"missing 'intermediate_size'"),
    ({"model_type": "opt", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 128,
      "vocab_size": 100, "max_position_embeddings": 64, "do_layer_norm_before": False}, r"do_layer_norm_before"),
    ({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 100}, r"not a multiple"),
    ({"model_type": "llama", "hidden_size": "64", "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "vocab_size": 100}, r"hidden_size must be a positive integer|wrong type"),
])
def test_from_hf_config_errors(tmp_path, cfg, match):
    with pytest.raises(ModelError, match=match):
        ModelSpec.from_hf_config(_write(tmp_path, cfg))


def test_from_hf_config_unreadable(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        ModelSpec.from_hf_config(p)
    with pytest.raises(ModelError, match="no such file"):
        ModelSpec.from_hf_config(tmp_path / "missing.json")
