"""KV-cache memory for a shared-prompt workload, with and without prefix caching.

Pure functions over a model's KV shape and a workload scenario; no I/O, so the same arithmetic
serves the ``kvspec estimate`` command and the test that checks it against the allocator.

The block arithmetic mirrors the allocator rather than an idealised token count, because the
point is to predict what a paged pool really holds:

* Without prefix caching every live request holds ``cdiv(P + S, B)`` blocks of its own.
* With prefix caching the ``floor(P / B)`` blocks that lie wholly inside the shared prompt are
  stored once and referenced by every request; each request also holds the rest of its table
  (the prompt's partial tail, its unique tokens, and the partial-block waste of at most
  ``B - 1`` tokens) as blocks of its own.
* A hit never covers a request's last token (``get_computed_blocks`` caps the hit at
  ``num_tokens - 1`` so the model still runs a token to sample from), so the shared count is
  ``min(floor(P / B), floor((P + S - 1) / B))``; the two differ only when ``S == 0`` and ``B``
  divides ``P``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GIB = 1 << 30

# Bytes per element of the KV cache, by the names users and Hugging Face configs spell.
DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "fp32": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
}


class EstimateError(ValueError):
    """A model description or scenario that the estimate cannot use; the message says why."""


def dtype_bytes(dtype: str) -> int:
    """Bytes per KV element for ``dtype`` (case-insensitive, ``torch.`` prefix allowed)."""
    key = dtype.lower().removeprefix("torch.")
    if key not in DTYPE_BYTES:
        known = ", ".join(sorted(DTYPE_BYTES))
        raise EstimateError(f"estimate: unknown dtype {dtype!r}; expected one of {known}")
    return DTYPE_BYTES[key]


def cdiv(a: int, b: int) -> int:
    """Ceiling division for non-negative ints: blocks needed to hold ``a`` tokens."""
    return -(-a // b)


@dataclass(frozen=True)
class ModelKVShape:
    """The per-layer KV geometry of a model: all the estimate needs to know about it.

    Standard attention (MHA/GQA) stores a K and a V vector per KV head per layer. MLA
    (DeepSeek-V2/V3) instead stores one compressed latent of ``kv_lora_rank`` plus the
    decoupled RoPE key of ``qk_rope_head_dim`` per layer, once, with no separate V: K and V
    are both re-expanded from it. That is why MLA's formula has no factor 2 and no heads.
    """

    name: str
    num_layers: int
    num_kv_heads: int = 0
    head_size: int = 0
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    dtype: str = "bfloat16"
    source: str = ""

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    def elements_per_token(self) -> int:
        """KV elements one token occupies across all layers."""
        if self.is_mla:
            return self.num_layers * (self.kv_lora_rank + (self.qk_rope_head_dim or 0))
        return 2 * self.num_layers * self.num_kv_heads * self.head_size

    def bytes_per_token(self, dtype: str | None = None) -> int:
        return self.elements_per_token() * dtype_bytes(dtype or self.dtype)

    def formula(self, dtype: str | None = None) -> str:
        """The bytes-per-token product written out, for printing beside the number."""
        nbytes = dtype_bytes(dtype or self.dtype)
        if self.is_mla:
            return (
                f"{self.num_layers} layers x ({self.kv_lora_rank} kv_lora_rank + "
                f"{self.qk_rope_head_dim or 0} qk_rope_head_dim) x {nbytes} B "
                "(MLA: one compressed latent per layer, stored once, no separate K and V)"
            )
        return (
            f"2 (K and V) x {self.num_layers} layers x {self.num_kv_heads} KV heads x "
            f"{self.head_size} head size x {nbytes} B"
        )


# Published config.json numbers (num_hidden_layers, num_key_value_heads, hidden_size /
# num_attention_heads; for MLA kv_lora_rank and qk_rope_head_dim). All ship in bfloat16.
MODELS: dict[str, ModelKVShape] = {
    m.name: m
    for m in (
        ModelKVShape("Llama-3.1-8B", 32, 8, 128, source="meta-llama/Llama-3.1-8B"),
        ModelKVShape("Llama-3.1-70B", 80, 8, 128, source="meta-llama/Llama-3.1-70B"),
        ModelKVShape("Mistral-7B", 32, 8, 128, source="mistralai/Mistral-7B-v0.3"),
        ModelKVShape("Qwen2.5-7B", 28, 4, 128, source="Qwen/Qwen2.5-7B"),
        ModelKVShape(
            "DeepSeek-V2-Lite",
            27,
            kv_lora_rank=512,
            qk_rope_head_dim=64,
            source="deepseek-ai/DeepSeek-V2-Lite (MLA)",
        ),
    )
}

DEFAULT_MODEL = "Llama-3.1-8B"


def builtin_model(name: str) -> ModelKVShape:
    """A built-in model by name, case-insensitively."""
    for key, model in MODELS.items():
        if key.lower() == name.lower():
            return model
    known = ", ".join(MODELS)
    raise EstimateError(f"estimate: unknown model {name!r}; built-in models are {known}")


def _positive_int(config: Mapping[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise EstimateError(
            f"estimate --config {where}: field {key!r} must be a positive integer, got {value!r}"
        )
    return value


def model_from_hf_config(config: Mapping[str, Any], name: str = "config.json") -> ModelKVShape:
    """Read a Hugging Face ``config.json`` (already parsed) into a :class:`ModelKVShape`.

    ``num_key_value_heads`` defaults to ``num_attention_heads`` (plain multi-head attention)
    and ``head_dim`` to ``hidden_size // num_attention_heads``, as in transformers. A config
    with a non-null ``kv_lora_rank`` is MLA. Multimodal configs keep the language model under
    ``text_config``, which is used when the top level has no ``num_hidden_layers``.
    """
    if "num_hidden_layers" not in config and isinstance(config.get("text_config"), Mapping):
        config = config["text_config"]
    if "num_hidden_layers" not in config:
        raise EstimateError(
            f"estimate --config {name}: missing field 'num_hidden_layers' "
            "(the number of layers, needed for KV bytes per token)"
        )
    layers = _positive_int(config, "num_hidden_layers", name)
    dtype = config.get("torch_dtype") or config.get("dtype") or ""
    if dtype:
        dtype_bytes(str(dtype))  # reject an unknown dtype here, naming it
    if config.get("kv_lora_rank") is not None:
        return ModelKVShape(
            name=name,
            num_layers=layers,
            kv_lora_rank=_positive_int(config, "kv_lora_rank", name),
            qk_rope_head_dim=_positive_int(config, "qk_rope_head_dim", name),
            dtype=str(dtype),
            source=name,
        )
    if "num_attention_heads" not in config:
        raise EstimateError(
            f"estimate --config {name}: missing field 'num_attention_heads' "
            "(needed for the KV head count and the head size)"
        )
    heads = _positive_int(config, "num_attention_heads", name)
    kv_heads = heads
    if config.get("num_key_value_heads") is not None:
        kv_heads = _positive_int(config, "num_key_value_heads", name)
    if config.get("head_dim") is not None:
        head_size = _positive_int(config, "head_dim", name)
    else:
        if "hidden_size" not in config:
            raise EstimateError(
                f"estimate --config {name}: missing fields 'head_dim' and 'hidden_size' "
                "(one is needed for the head size)"
            )
        head_size = _positive_int(config, "hidden_size", name) // heads
    return ModelKVShape(name, layers, kv_heads, head_size, dtype=str(dtype), source=name)


@dataclass(frozen=True)
class Scenario:
    """The shared-prompt workload: ``concurrency`` live requests, each a shared prompt of
    ``prompt_tokens`` followed by ``unique_tokens`` of its own, in blocks of ``block_size``."""

    prompt_tokens: int
    unique_tokens: int
    concurrency: int
    block_size: int

    def __post_init__(self) -> None:
        for field in ("prompt_tokens", "unique_tokens", "concurrency"):
            if getattr(self, field) < 0:
                raise EstimateError(f"estimate: {field} must be >= 0, got {getattr(self, field)}")
        if self.block_size <= 0:
            raise EstimateError(f"estimate: block_size must be positive, got {self.block_size}")


def concurrency_from_rate(users_per_min: float, lifetime_s: float) -> int:
    """Little's law, L = lambda x W: mean live requests for an arrival rate and a mean lifetime,
    rounded up, since a fraction of a request still holds whole blocks."""
    if users_per_min < 0 or lifetime_s < 0:
        raise EstimateError("estimate: --users-per-min and --lifetime-s must be >= 0")
    return math.ceil(users_per_min / 60.0 * lifetime_s - 1e-9)


@dataclass(frozen=True)
class BlockEstimate:
    """Block counts for one scenario; see the module docstring for the arithmetic."""

    scenario: Scenario
    blocks_per_request: int  # cdiv(P + S, B): one request's table length
    shared_blocks: int  # blocks stored once with prefix caching
    own_blocks_per_request: int  # blocks each request holds alone with prefix caching
    waste_tokens_per_request: int  # empty slots in a request's last block, <= B - 1

    @property
    def blocks_without_caching(self) -> int:
        return self.scenario.concurrency * self.blocks_per_request

    @property
    def blocks_with_caching(self) -> int:
        if self.scenario.concurrency == 0:
            return 0  # nobody references the shared blocks: they are free (evictable)
        return self.shared_blocks + self.scenario.concurrency * self.own_blocks_per_request

    @property
    def multiplier(self) -> float:
        if self.blocks_with_caching == 0:
            return 1.0
        return self.blocks_without_caching / self.blocks_with_caching


def estimate_blocks(scenario: Scenario) -> BlockEstimate:
    p, s, b = scenario.prompt_tokens, scenario.unique_tokens, scenario.block_size
    total = p + s
    per_request = cdiv(total, b)
    shared = min(p // b, (total - 1) // b) if total > 0 else 0
    return BlockEstimate(
        scenario=scenario,
        blocks_per_request=per_request,
        shared_blocks=shared,
        own_blocks_per_request=per_request - shared,
        waste_tokens_per_request=per_request * b - total,
    )


def blocks_to_gib(blocks: int, block_size: int, bytes_per_token: int) -> float:
    return blocks * block_size * bytes_per_token / GIB


def explain_multiplier(est: BlockEstimate) -> str:
    """One line saying why the multiplier is what it is."""
    sc = est.scenario
    total = sc.prompt_tokens + sc.unique_tokens
    if total == 0 or sc.concurrency == 0:
        return "No tokens are held, so prefix caching has nothing to save."
    share = 100.0 * sc.prompt_tokens / total
    return (
        f"The shared prompt is {share:.1f}% of every request's {total:,} tokens: without "
        f"prefix caching it is stored {sc.concurrency:,} times, with it once, so each request "
        f"adds only its {est.own_blocks_per_request} own block(s) instead of "
        f"{est.blocks_per_request}; the multiplier tends to {est.blocks_per_request}/"
        f"{est.own_blocks_per_request} as concurrency grows."
    )
