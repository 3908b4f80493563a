"""``kvspec estimate``: KV-cache memory for a shared system prompt, with and without prefix caching.

The defaults are the study sheet's design question: one 4,096-token system prompt served to
1,000 users per minute, each adding 50 tokens, on Llama-3.1-8B in bfloat16 with 16-token
blocks. The sheet gives an arrival rate, not a concurrency; the default mean request lifetime
of 60 s turns it into 1,000 live requests (Little's law). The arithmetic lives in
:mod:`kvspec.impl.memory_estimate`; this module only reads the arguments and the config file and
prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kvspec.conformance.commands import non_negative_float
from kvspec.impl.memory_estimate import (
    DEFAULT_MODEL,
    MODELS,
    EstimateError,
    ModelKVShape,
    Scenario,
    blocks_to_gib,
    builtin_model,
    concurrency_from_rate,
    dtype_bytes,
    estimate_blocks,
    explain_multiplier,
    model_from_hf_config,
)

DEFAULT_PROMPT_TOKENS = 4096
DEFAULT_USERS_PER_MIN = 1000.0
DEFAULT_UNIQUE_TOKENS = 50
DEFAULT_LIFETIME_S = 60.0
DEFAULT_BLOCK_SIZE = 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group()
    model.add_argument(
        "--model",
        default=None,
        help=f"built-in model ({', '.join(MODELS)}); default {DEFAULT_MODEL}",
    )
    model.add_argument(
        "--config",
        type=Path,
        default=None,
        help="a Hugging Face config.json on disk (read locally, no network)",
    )
    model.add_argument(
        "--all-models",
        action="store_true",
        help="print one summary row per built-in model instead of the detailed table",
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=DEFAULT_PROMPT_TOKENS,
        metavar="P",
        help=f"shared system prompt length in tokens (default {DEFAULT_PROMPT_TOKENS})",
    )
    parser.add_argument(
        "--unique-tokens",
        type=int,
        default=DEFAULT_UNIQUE_TOKENS,
        metavar="S",
        help=f"tokens each request adds after the prompt (default {DEFAULT_UNIQUE_TOKENS})",
    )
    parser.add_argument(
        "--users-per-min",
        type=non_negative_float,
        default=DEFAULT_USERS_PER_MIN,
        metavar="U",
        help=f"request arrival rate (default {DEFAULT_USERS_PER_MIN:g})",
    )
    live = parser.add_mutually_exclusive_group()
    live.add_argument(
        "--lifetime-s",
        type=non_negative_float,
        default=None,
        help=(
            "mean request lifetime in seconds; concurrency = ceil(U / 60 x lifetime) "
            f"(default {DEFAULT_LIFETIME_S:g})"
        ),
    )
    live.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="C",
        help="live requests, given directly instead of --users-per-min x --lifetime-s",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=DEFAULT_BLOCK_SIZE,
        metavar="B",
        help=f"tokens per KV block (default {DEFAULT_BLOCK_SIZE})",
    )
    parser.add_argument(
        "--dtype",
        default=None,
        help="KV cache dtype (bfloat16, float16, float32, fp8); default: the model's dtype",
    )


def _load_model(args: argparse.Namespace) -> ModelKVShape:
    if args.config is None:
        return builtin_model(args.model or DEFAULT_MODEL)
    try:
        config = json.loads(args.config.read_text())
    except OSError as exc:
        raise EstimateError(f"estimate --config {args.config}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise EstimateError(f"estimate --config {args.config}: not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise EstimateError(f"estimate --config {args.config}: expected a JSON object")
    model = model_from_hf_config(config, name=str(args.config))
    if not model.dtype and not args.dtype:
        raise EstimateError(
            f"estimate --config {args.config}: no 'torch_dtype' field; pass --dtype"
        )
    return model


def _scenario(args: argparse.Namespace) -> tuple[Scenario, str]:
    if args.concurrency is not None:
        concurrency = args.concurrency
        how = "given"
    else:
        lifetime = DEFAULT_LIFETIME_S if args.lifetime_s is None else args.lifetime_s
        concurrency = concurrency_from_rate(args.users_per_min, lifetime)
        how = (
            f"Little's law: ceil({args.users_per_min:,g} users/min / 60 x {lifetime:g} s "
            "mean lifetime)"
        )
    scenario = Scenario(args.prompt_tokens, args.unique_tokens, concurrency, args.block_size)
    return scenario, how


def _detail(model: ModelKVShape, dtype: str, scenario: Scenario, how: str) -> list[str]:
    est = estimate_blocks(scenario)
    per_token = model.bytes_per_token(dtype)
    b = scenario.block_size
    p, s, c = scenario.prompt_tokens, scenario.unique_tokens, scenario.concurrency
    gib = lambda blocks: blocks_to_gib(blocks, b, per_token)  # noqa: E731
    without, with_ = est.blocks_without_caching, est.blocks_with_caching
    rows = [
        ("without prefix caching", without, f"{c:,} x cdiv({p + s:,}, {b}) = {c:,} x "
         f"{est.blocks_per_request}"),
        ("with prefix caching", with_, f"{est.shared_blocks:,} shared + {c:,} x "
         f"{est.own_blocks_per_request} own"),
    ]
    lines = [
        f"model        {model.name} ({model.source}), KV dtype {dtype}",
        f"KV per token {per_token:,} B = {model.formula(dtype)}",
        f"KV per block {b * per_token:,} B ({b * per_token / (1 << 20):g} MiB) = {b} tokens",
        f"scenario     shared prompt P = {p:,} tokens, unique S = {s:,} tokens per request, "
        f"block size B = {b}",
        f"concurrency  C = {c:,} live requests ({how})",
        f"waste        {est.waste_tokens_per_request} empty token slot(s) in each request's "
        f"last block (at most B - 1 = {b - 1})",
        "",
        f"  {'':<24}{'blocks':>12}{'GiB':>12}   arithmetic",
    ]
    for label, blocks, arithmetic in rows:
        lines.append(f"  {label:<24}{blocks:>12,}{gib(blocks):>12,.2f}   {arithmetic}")
    lines.append(f"  {'multiplier':<24}{est.multiplier:>11,.2f}x")
    lines.append("")
    lines.append(f"why: {explain_multiplier(est)}")
    return lines


def _all_models(dtype: str | None, scenario: Scenario, how: str) -> list[str]:
    est = estimate_blocks(scenario)
    b = scenario.block_size
    lines = [
        f"scenario: P = {scenario.prompt_tokens:,}, S = {scenario.unique_tokens:,}, "
        f"C = {scenario.concurrency:,} ({how}), B = {b}; blocks without caching "
        f"{est.blocks_without_caching:,}, with caching {est.blocks_with_caching:,}, "
        f"multiplier {est.multiplier:,.2f}x",
        "",
        f"  {'model':<18}{'dtype':<10}{'B/token':>10}{'GiB without':>14}{'GiB with':>12}",
    ]
    for model in MODELS.values():
        d = dtype or model.dtype
        per_token = model.bytes_per_token(d)
        lines.append(
            f"  {model.name:<18}{d:<10}{per_token:>10,}"
            f"{blocks_to_gib(est.blocks_without_caching, b, per_token):>14,.2f}"
            f"{blocks_to_gib(est.blocks_with_caching, b, per_token):>12,.2f}"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        if args.dtype:
            dtype_bytes(args.dtype)
        scenario, how = _scenario(args)
        if args.all_models:
            lines = _all_models(args.dtype, scenario, how)
        else:
            model = _load_model(args)
            lines = _detail(model, args.dtype or model.dtype, scenario, how)
    except EstimateError as exc:
        print(f"kvspec: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0
