"""``kvspec estimate``: the memory formula, config reading, and the allocator cross-check.

The cross-check is the point: the same shared-prompt scenario is driven through
``impl.KVCacheManager`` and the blocks it holds must equal the estimate exactly, with prefix
caching on and off.
"""

from __future__ import annotations

import json

import pytest
from kvspec.conformance.cli import main as kvspec
from kvspec.impl.kv_cache_manager import KVCacheManager
from kvspec.impl.memory_estimate import (
    MODELS,
    EstimateError,
    Scenario,
    blocks_to_gib,
    builtin_model,
    concurrency_from_rate,
    estimate_blocks,
    model_from_hf_config,
)
from kvspec.impl.request import Request

# ----------------------------------------------------------------------------- the formula


def test_llama_3_1_8b_holds_128_kib_of_kv_per_token_in_bf16():
    model = builtin_model("llama-3.1-8b")
    assert model.bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Llama-3.1-70B", 2 * 80 * 8 * 128 * 2),
        ("Mistral-7B", 2 * 32 * 8 * 128 * 2),
        ("Qwen2.5-7B", 2 * 28 * 4 * 128 * 2),
        ("DeepSeek-V2-Lite", 27 * (512 + 64) * 2),  # MLA: one latent, no K/V pair
    ],
)
def test_builtin_models_bytes_per_token(name, expected):
    assert MODELS[name].bytes_per_token() == expected


def test_fp8_halves_the_bf16_footprint():
    model = builtin_model("Llama-3.1-8B")
    assert model.bytes_per_token("fp8") * 2 == model.bytes_per_token("bfloat16")


def test_study_sheet_scenario_needs_61x_less_memory_with_prefix_caching():
    # 4,096-token prompt, 1,000 live requests (1,000 users/min x 60 s), 50 tokens each.
    est = estimate_blocks(Scenario(prompt_tokens=4096, unique_tokens=50, concurrency=1000,
                                   block_size=16))
    assert est.blocks_per_request == 260  # cdiv(4146, 16)
    assert est.shared_blocks == 256
    assert est.own_blocks_per_request == 4  # 50 tokens + 14 slots of waste
    assert est.waste_tokens_per_request == 14
    assert est.blocks_without_caching == 260_000
    assert est.blocks_with_caching == 256 + 1000 * 4
    per_token = builtin_model("Llama-3.1-8B").bytes_per_token()
    assert blocks_to_gib(est.blocks_without_caching, 16, per_token) == pytest.approx(507.8125)
    assert blocks_to_gib(est.blocks_with_caching, 16, per_token) == pytest.approx(8.3125)
    assert est.multiplier == pytest.approx(260_000 / 4256)


def test_prompt_tail_that_fills_no_block_is_held_per_request():
    # P = 40 at B = 16: 2 full shared blocks; the 8 prompt tokens left share a block with
    # each request's own tokens, so that block cannot be shared.
    est = estimate_blocks(Scenario(prompt_tokens=40, unique_tokens=3, concurrency=5,
                                   block_size=16))
    assert (est.shared_blocks, est.own_blocks_per_request) == (2, 1)
    assert est.waste_tokens_per_request == 16 * 3 - 43


def test_a_fully_cached_prompt_still_recomputes_its_last_block():
    # S = 0 and B divides P: the hit stops one token short, so the last block is private.
    est = estimate_blocks(Scenario(prompt_tokens=64, unique_tokens=0, concurrency=10,
                                   block_size=16))
    assert (est.shared_blocks, est.own_blocks_per_request) == (3, 1)


def test_no_live_requests_hold_no_blocks():
    est = estimate_blocks(Scenario(prompt_tokens=64, unique_tokens=5, concurrency=0,
                                   block_size=16))
    assert est.blocks_with_caching == est.blocks_without_caching == 0


def test_concurrency_follows_littles_law_rounded_up():
    assert concurrency_from_rate(1000, 60) == 1000
    assert concurrency_from_rate(1000, 10) == 167  # 166.67 live on average
    assert concurrency_from_rate(0, 60) == 0


def test_negative_scenario_values_are_refused():
    with pytest.raises(EstimateError, match="unique_tokens"):
        Scenario(prompt_tokens=10, unique_tokens=-1, concurrency=1, block_size=16)
    with pytest.raises(EstimateError, match="block_size"):
        Scenario(prompt_tokens=10, unique_tokens=1, concurrency=1, block_size=0)


# ---------------------------------------------------------------------- Hugging Face config

LLAMA_8B_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "torch_dtype": "bfloat16",
}


def test_hf_config_matches_the_builtin_llama():
    model = model_from_hf_config(LLAMA_8B_CONFIG)
    assert model.bytes_per_token() == builtin_model("Llama-3.1-8B").bytes_per_token()


def test_hf_config_without_kv_heads_is_plain_multi_head_attention():
    config = {k: v for k, v in LLAMA_8B_CONFIG.items() if k != "num_key_value_heads"}
    model = model_from_hf_config(config)
    assert (model.num_kv_heads, model.head_size) == (32, 128)


def test_hf_config_head_dim_overrides_hidden_size_over_heads():
    model = model_from_hf_config({**LLAMA_8B_CONFIG, "head_dim": 256})
    assert model.head_size == 256


def test_hf_config_with_kv_lora_rank_is_mla():
    config = {"num_hidden_layers": 27, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
              "num_attention_heads": 16, "hidden_size": 2048, "torch_dtype": "bfloat16"}
    model = model_from_hf_config(config)
    assert model.is_mla
    assert model.bytes_per_token() == MODELS["DeepSeek-V2-Lite"].bytes_per_token()


def test_hf_config_missing_layers_names_the_field():
    with pytest.raises(EstimateError, match="num_hidden_layers"):
        model_from_hf_config({"num_attention_heads": 32})


def test_hf_config_missing_head_size_names_both_sources():
    with pytest.raises(EstimateError, match="head_dim.*hidden_size"):
        model_from_hf_config({"num_hidden_layers": 2, "num_attention_heads": 4})


def test_hf_config_unknown_dtype_is_refused():
    with pytest.raises(EstimateError, match="dtype"):
        model_from_hf_config({**LLAMA_8B_CONFIG, "torch_dtype": "int3"})


# ------------------------------------------------------------------------------------ CLI


def test_cli_prints_the_study_sheet_table(capsys):
    assert kvspec(["estimate"]) == 0
    out = capsys.readouterr().out
    assert "260,000" in out and "4,256" in out and "61.09x" in out
    assert "Llama-3.1-8B" in out and "why:" in out


def test_cli_reads_a_config_file(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(LLAMA_8B_CONFIG))
    assert kvspec(["estimate", "--config", str(path), "--concurrency", "10"]) == 0
    assert "131,072 B" in capsys.readouterr().out


def test_cli_reports_a_config_without_dtype(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in LLAMA_8B_CONFIG.items() if k != "torch_dtype"}))
    assert kvspec(["estimate", "--config", str(path)]) == 2
    assert "--dtype" in capsys.readouterr().err


def test_cli_all_models_prints_one_row_per_model(capsys):
    assert kvspec(["estimate", "--all-models"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in MODELS)


# ------------------------------------------------------------- cross-check with the allocator


def blocks_in_use(scenario: Scenario, *, enable_caching: bool) -> int:
    """Admit ``concurrency`` requests (shared prompt + distinct own tokens) and count held
    blocks. Requests stay live, as in the estimate's steady state."""
    p, s, b, c = (scenario.prompt_tokens, scenario.unique_tokens, scenario.block_size,
                  scenario.concurrency)
    num_blocks = 1 + c * -(-(p + s) // b) + 4  # room for the no-caching case, null block
    manager = KVCacheManager(num_blocks, b, enable_caching=enable_caching)
    prompt = list(range(1, p + 1))
    for i in range(c):
        own = [100_000 + i * max(s, 1) + j for j in range(s)]  # distinct per request
        request = Request(f"req-{i}", prompt + own, block_hasher=manager.block_hasher)
        hits, num_hit_tokens = manager.get_computed_blocks(request)
        new = manager.allocate_slots(request, request.num_tokens - num_hit_tokens,
                                     num_hit_tokens, hits)
        assert new is not None, f"request {i} did not fit in {num_blocks} blocks"
        request.num_computed_tokens = request.num_tokens
    return (num_blocks - 1) - manager.block_pool.get_num_free_blocks()


CROSS_CHECK = [
    pytest.param(Scenario(64, 5, 20, 16), id="prompt-of-4-blocks-plus-5-tokens"),
    pytest.param(Scenario(40, 3, 20, 16), id="prompt-ends-mid-block"),
    pytest.param(Scenario(48, 37, 20, 16), id="own-tokens-span-blocks"),
    pytest.param(Scenario(64, 0, 20, 16), id="no-own-tokens-last-block-recomputed"),
    pytest.param(Scenario(4096, 50, 20, 16), id="study-sheet-prompt-20-requests"),
    pytest.param(Scenario(30, 2, 20, 4), id="block-size-4"),
]


@pytest.mark.parametrize("scenario", CROSS_CHECK)
def test_manager_holds_exactly_the_estimated_blocks_with_prefix_caching(scenario):
    est = estimate_blocks(scenario)
    assert blocks_in_use(scenario, enable_caching=True) == est.blocks_with_caching


@pytest.mark.parametrize("scenario", CROSS_CHECK)
def test_manager_holds_exactly_the_estimated_blocks_without_prefix_caching(scenario):
    est = estimate_blocks(scenario)
    assert blocks_in_use(scenario, enable_caching=False) == est.blocks_without_caching
