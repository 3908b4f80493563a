"""The hybrid protocol's small vocabulary: what the exhaustive engine enumerates.

Every operation of the hybrid protocol, each with every value of a small argument set, on
one small pool (see ``small_configs`` in :mod:`kvspec.conformance.hybrid.level`):

* ``add_request`` of a new id, up to three requests: a four-token prompt, and one sharing
  its first two tokens;
* ``get_computed_blocks``, ``free`` and ``preempt`` of every request;
* ``allocate_slots`` of every request with 1, 2 or 4 new tokens, with or without the hits
  ``get_computed_blocks`` returns now (the protocol's trusted input), with 0 or 1 external
  computed tokens (at admission only, as a connector supplies them);
* ``set_num_computed_tokens`` of every request to each count up to its slots;
  ``append_output_tokens`` of one token; ``reset_prefix_cache``.

No bad input (the manager level's vocabulary sends it) and no bookkeeping beyond the
driver's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from kvspec.conformance.hybrid.driver import HybridConfig, HybridDriver, start_driver
from kvspec.conformance.level import Domain, Harness, Recorder, RunOptions, move
from kvspec.spec import hybrid as sh

PROMPTS: tuple[tuple[int, ...], ...] = ((1, 2, 3, 4), (1, 2, 5, 6, 7))
MAX_REQUESTS = 3
#: (num_new_tokens, adopt the hits, num_external_computed_tokens)
ALLOCATIONS: tuple[tuple[int, bool, int], ...] = (
    (1, False, 0), (1, True, 0), (2, False, 0), (4, False, 0), (4, True, 0),
    (1, True, 1), (2, False, 1),
)


def _known(v: HybridVocabulary) -> list[str]:
    return list(v.driver.requests)


def _computed(v: HybridVocabulary) -> list[tuple[str, int]]:
    out = []
    for rid, req in v.driver.requests.items():
        slots = min((len(t) * g.block_size for t, g in
                     zip(sh.get_block_ids(v.driver.spec, rid), v.driver.groups, strict=True)),
                    default=0)
        out += [(rid, k) for k in sorted({0, 2, 4, req.num_tokens}) if k <= min(slots,
                                                                                  req.num_tokens)]
    return out


class HybridVocabulary(Harness):
    """The hybrid protocol's operations, with small arguments; see the module docstring."""

    driver: HybridDriver

    def key(self) -> Hashable:
        return ()

    def copy_bookkeeping(self) -> HybridVocabulary:
        return self.shallow_copy()  # type: ignore[return-value]

    @move(prompt=Domain(values=PROMPTS),
          enabled=lambda v: len(v.driver.requests) < MAX_REQUESTS)
    def add_request(self, prompt: tuple[int, ...]) -> None:
        self.do("add_request", request_id=f"r{len(self.driver.requests)}",
                prompt_token_ids=list(prompt))

    @move(request_id=Domain(values=_known))
    def get_computed_blocks(self, request_id: str) -> None:
        self.do("get_computed_blocks", request_id=request_id)

    @move(request_id=Domain(values=_known), allocation=Domain(values=ALLOCATIONS))
    def allocate_slots(self, request_id: str, allocation: tuple[int, bool, int]) -> None:
        num_new, adopt, external = allocation
        spec, req = self.driver.spec, self.driver.requests[request_id]
        admitting = request_id not in spec.running
        if (adopt or external) and not admitting:
            return  # hits and connector tokens come only at admission
        args: dict[str, Any] = {"request_id": request_id, "num_new_tokens": num_new}
        if adopt:
            hits, num = sh.get_computed_blocks(spec, req)
            if not num:
                return
            args["num_new_computed_tokens"] = num
            args["new_computed_blocks"] = [list(h) for h in hits]
        if external:
            args["num_external_computed_tokens"] = external
        self.do("allocate_slots", **args)

    @move(target=Domain(values=_computed))
    def set_num_computed_tokens(self, target: tuple[str, int]) -> None:
        request_id, num = target
        self.do("set_num_computed_tokens", request_id=request_id, num_computed_tokens=num)

    @move(request_id=Domain(values=_known))
    def append_output_tokens(self, request_id: str) -> None:
        self.do("append_output_tokens", request_id=request_id, token_ids=[5])

    @move(request_id=Domain(values=_known))
    def free(self, request_id: str) -> None:
        self.do("free", request_id=request_id)

    @move(request_id=Domain(values=_known))
    def preempt(self, request_id: str) -> None:
        self.do("preempt", request_id=request_id)

    @move()
    def reset_prefix_cache(self) -> None:
        self.do("reset_prefix_cache")


def start_vocabulary(factory: Any, config: HybridConfig, options: RunOptions,
                     recorder: Recorder) -> HybridVocabulary:
    """The vocabulary over a fresh target, the fresh state judged."""
    driver = start_driver(factory, config, judge_bad_input=options.checks_bad_input)
    return HybridVocabulary(driver, recorder)
