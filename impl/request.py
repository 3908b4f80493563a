"""A request as the KV-cache manager sees it: token ids, progress and block hashes.

Only what the manager reads lives here. The scheduler (or a test playing it) owns
``num_computed_tokens`` and appends sampled tokens; the request keeps ``block_hashes``
current by calling its block hasher whenever tokens are added, so hashes are computed
once per full block, as the block completes, rather than on every lookup.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from kvspec.impl.errors import InvalidArgumentError
from kvspec.impl.validate import as_list, check_str


@dataclass(frozen=True, slots=True)
class MultiModalFeature:
    """One multimodal item of a prompt: its content identifier and placeholder span.

    The identifier (a content hash of the image, audio clip, ...) is what enters block
    hashes: placeholder token ids are the same for every image, so without it two
    prompts with different images would share KV.
    """

    identifier: str
    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length <= 0:
            raise InvalidArgumentError(
                f"MultiModalFeature {self.identifier!r}: expected offset >= 0 and length > 0, "
                f"got offset={self.offset}, length={self.length}"
            )


class Request:
    """A generation request: prompt plus outputs so far, and their full-block hashes.

    ``block_hasher`` (from ``kvspec.impl.kv_cache_utils.get_request_block_hasher``) is stored on
    the request, not passed to the manager at lookup time, because hashes must be
    extended incrementally as tokens arrive; without one, ``block_hashes`` stays empty
    and the request can neither hit nor populate the prefix cache.

    ``mm_features`` must be sorted by offset and non-overlapping, as a tokenizer
    produces them.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        *,
        block_hasher: Callable[[Request], list[bytes]] | None = None,
        lora_name: str | None = None,
        lora_path: str | None = None,
        cache_salt: str | None = None,
        mm_features: Iterable[MultiModalFeature] = (),
    ) -> None:
        self.request_id = check_str("Request", "request_id", request_id)
        self.prompt_token_ids: list[int] = list(as_list("Request", "prompt_token_ids",
                                                        prompt_token_ids))
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.output_token_ids: list[int] = []
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        self.lora_name = lora_name
        self.lora_path = lora_path
        self.cache_salt = cache_salt
        self.mm_features: tuple[MultiModalFeature, ...] = tuple(mm_features)
        for prev, nxt in zip(self.mm_features, self.mm_features[1:], strict=False):
            if nxt.offset < prev.offset + prev.length:
                raise InvalidArgumentError(
                    f"Request {request_id!r}: mm_features must be sorted and disjoint; "
                    f"{nxt.identifier!r} at {nxt.offset} overlaps {prev.identifier!r} "
                    f"ending at {prev.offset + prev.length}"
                )
        self.num_computed_tokens = 0
        """Tokens whose KV is written; set by the scheduler, read by ``allocate_slots``."""
        self.num_preemptions = 0
        """Times the scheduler preempted this request; splits the prefix-cache statistics."""
        self.block_hashes: list[bytes] = []
        self._block_hasher = block_hasher
        self.update_block_hashes()

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens; the lookup cap ``num_tokens - 1`` is taken from it."""
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_output_token_ids(self, token_ids: int | Sequence[int]) -> None:
        """Append sampled tokens and hash any block they complete."""
        new = [token_ids] if isinstance(token_ids, int) else list(token_ids)
        self.output_token_ids.extend(new)
        self.all_token_ids.extend(new)
        self.update_block_hashes()

    def update_block_hashes(self) -> None:
        """Extend ``block_hashes`` with blocks completed since the last call."""
        if self._block_hasher is not None:
            self.block_hashes.extend(self._block_hasher(self))

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, num_tokens={self.num_tokens}, "
            f"num_computed_tokens={self.num_computed_tokens}, "
            f"block_hashes={len(self.block_hashes)})"
        )
