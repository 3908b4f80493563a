"""The manager protocol's small vocabulary: what the exhaustive engine enumerates.

Every operation of the manager protocol, each with every value of a small argument set,
block size 2:

* ``add_request`` of a new id, up to three requests: a two-block prompt, plain, under a
  LoRA adapter named ``x``, under a tenant salted ``x`` (the same string in two roles), and
  under both; and a prompt sharing its first block, with a partial second one; and of an
  id already added (bad input);
* ``get_computed_blocks``, ``free`` and ``preempt`` of every request and of an unknown id;
* ``allocate_slots`` of every request with 0, 1, 2 or 4 new tokens, with or without the hits
  ``get_computed_blocks`` returns now (the protocol's trusted input), one lookahead slot;
  and its bad inputs: a negative count or lookahead, hit tokens without hit blocks, hits
  into a request that holds blocks;
* ``set_num_computed_tokens`` of every request to 0, 2, 4 or all its tokens (as far as it
  has slots: a scheduler computes only what it allocated), or one more than all (bad
  input); ``append_output_tokens`` of one token; ``reset_prefix_cache``.

Bad inputs the factory says its targets do not refuse (``unsupported_bad_input``) are never
sent. No bookkeeping beyond the driver's: a state is the spec's state, the requests, and the
target's observations.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from kvspec.conformance.level import Domain, Harness, Recorder, RunOptions, move
from kvspec.conformance.manager.driver import ManagerConfig, ManagerDriver, start_driver
from kvspec.conformance.manager.harness import TENANT, UNKNOWN_ID, unsupported_bad_inputs
from kvspec.spec import manager as sm

NEW_REQUESTS: tuple[tuple[tuple[int, ...], str | None, str | None], ...] = (
    ((1, 2, 3, 4), None, None),
    ((1, 2, 3, 4), TENANT, None),
    ((1, 2, 3, 4), None, TENANT),
    ((1, 2, 3, 4), TENANT, TENANT),
    ((1, 2, 5), None, None),
)
"""(prompt, lora_name, cache_salt) of each request the vocabulary adds."""
MAX_REQUESTS = 3

# (num_new_tokens, adopt the hits, num_lookahead_tokens, the bad-input kind or None)
ALLOCATIONS: tuple[tuple[int, bool, int, str | None], ...] = (
    (0, False, 0, "zero_new_tokens"),
    (0, True, 0, None),
    (1, False, 0, None),
    (1, True, 0, None),
    (2, False, 0, None),
    (4, False, 0, None),
    (4, True, 0, None),
    (1, False, 1, None),
    (-1, False, 0, "negative_new_tokens"),
    (1, False, -1, "negative_lookahead"),
)


def _ids(v: ManagerVocabulary) -> list[str]:
    return [*v.driver.requests, UNKNOWN_ID]


def _known(v: ManagerVocabulary) -> list[str]:
    return list(v.driver.requests)


def _computed(v: ManagerVocabulary) -> list[tuple[str, int]]:
    out = []
    for rid, req in v.driver.requests.items():
        slots = len(sm.get_block_ids(v.driver.spec, rid)) * v.driver.config.block_size
        out += [(rid, k) for k in sorted({0, 2, 4, req.num_tokens}) if k <= slots]
        if v.sends("computed_beyond_tokens"):
            out.append((rid, req.num_tokens + 1))
    return out


class ManagerVocabulary(Harness):
    """The manager protocol's operations, with small arguments; see the module docstring."""

    driver: ManagerDriver

    def __init__(self, driver: ManagerDriver, recorder: Recorder, *,
                 unsupported: frozenset[str], bad_input: bool) -> None:
        super().__init__(driver, recorder)
        self.unsupported = unsupported
        self.bad_input = bad_input

    def key(self) -> Hashable:
        return ()

    def copy_bookkeeping(self) -> ManagerVocabulary:
        return self.shallow_copy()  # type: ignore[return-value]

    def sends(self, kind: str | None) -> bool:
        """Whether this run sends bad input of ``kind`` (None: not bad input)."""
        return kind is None or (self.bad_input and kind not in self.unsupported)

    @move(new=Domain(values=NEW_REQUESTS),
          enabled=lambda v: len(v.driver.requests) < MAX_REQUESTS)
    def add_request(self, new: tuple[tuple[int, ...], str | None, str | None]) -> None:
        prompt, lora, salt = new
        self.do("add_request", request_id=f"r{len(self.driver.requests)}",
                prompt_token_ids=list(prompt), lora_name=lora, cache_salt=salt)

    @move(request_id=Domain(values=_known),
          enabled=lambda v: bool(v.driver.requests) and v.sends("duplicate_request"))
    def add_duplicate(self, request_id: str) -> None:
        self.do("add_request", request_id=request_id, prompt_token_ids=[1])

    @move(request_id=Domain(values=_ids))
    def get_computed_blocks(self, request_id: str) -> None:
        if request_id == UNKNOWN_ID and not self.sends("unknown_request"):
            return
        self.do("get_computed_blocks", request_id=request_id)

    @move(request_id=Domain(values=_known), allocation=Domain(values=ALLOCATIONS))
    def allocate_slots(self, request_id: str,
                       allocation: tuple[int, bool, int, str | None]) -> None:
        num_new, adopt, lookahead, kind = allocation
        if not self.sends(kind):
            return
        args: dict[str, Any] = {"request_id": request_id, "num_new_tokens": num_new}
        if lookahead:
            args["num_lookahead_tokens"] = lookahead
        if adopt:
            table = self.driver.spec.req_to_blocks.get(request_id, [])
            if table:  # hits into a request that holds blocks: bad input
                if not self.sends("hits_into_running_request"):
                    return
                hits = table[:1]
            else:
                hits, _ = sm.get_computed_blocks(self.driver.spec,
                                                 self.driver.requests[request_id])
                if not hits:
                    return
            args["num_new_computed_tokens"] = len(hits) * self.driver.config.block_size
            args["new_computed_blocks"] = list(hits)
        self.do("allocate_slots", **args)

    @move(request_id=Domain(values=_known),
          enabled=lambda v: bool(v.driver.requests) and v.sends("hit_length_mismatch"))
    def allocate_hit_tokens_without_blocks(self, request_id: str) -> None:
        self.do("allocate_slots", request_id=request_id, num_new_tokens=1,
                num_new_computed_tokens=self.driver.config.block_size,
                new_computed_blocks=[])

    @move(target=Domain(values=_computed))
    def set_num_computed_tokens(self, target: tuple[str, int]) -> None:
        request_id, num = target
        self.do("set_num_computed_tokens", request_id=request_id, num_computed_tokens=num)

    @move(request_id=Domain(values=_known))
    def append_output_tokens(self, request_id: str) -> None:
        self.do("append_output_tokens", request_id=request_id, token_ids=[5])

    @move(request_id=Domain(values=_ids))
    def free(self, request_id: str) -> None:
        if request_id == UNKNOWN_ID and not self.sends("unknown_request"):
            return
        self.do("free", request_id=request_id)

    @move(request_id=Domain(values=_ids))
    def preempt(self, request_id: str) -> None:
        if request_id == UNKNOWN_ID and not self.sends("unknown_request"):
            return
        self.do("preempt", request_id=request_id)

    @move()
    def reset_prefix_cache(self) -> None:
        self.do("reset_prefix_cache")


def start_vocabulary(factory: Any, config: ManagerConfig, options: RunOptions,
                     recorder: Recorder) -> ManagerVocabulary:
    """The vocabulary over a fresh target, the fresh state judged."""
    driver = start_driver(factory, config, judge_bad_input=options.checks_bad_input)
    return ManagerVocabulary(driver, recorder, unsupported=unsupported_bad_inputs(factory),
                             bad_input=options.checks_bad_input)
