"""Block hashing, as a specification.

A block's hash names the *whole prefix* that ends with it, not just its own tokens:

    hash(block i) = H((hash(block i - 1) or ROOT_HASH, tuple(tokens of block i), extra_keys))

Each rule below says why it is there; every one of them closes a way for two different
prefixes to share a key, which would hand a request KV computed for someone else's text.

``H`` is SHA-256 over a pickle (protocol 5) of the triple, the encoding upstream's default
``sha256`` hash function uses, made value-deterministic (see :func:`sha256_hash`). Python's
``hash()`` is never used: it is salted per process, so two processes (or a restart) would
disagree about every key.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvspec.spec.profiles import Profile

#: The pickle protocol of the encoding. Fixed, not ``pickle.HIGHEST_PROTOCOL``, so a newer
#: Python with a new protocol cannot change every key; 5 is what upstream gets today.
PICKLE_PROTOCOL = 5

#: The seed of the root hash, the parent of every first block (upstream's cryptographic
#: default when ``PYTHONHASHSEED`` is unset).
ROOT_SEED = "vllm-none-hash"

HashFn = Callable[[object], bytes]


def _canonical(obj: object, shared: dict[tuple[type, object], object]) -> object:
    """A copy of ``obj`` whose pickle depends only on its value.

    Pickle writes a second occurrence of the *same object* as a back-reference, but a
    second *equal* object in full, so ``("a", "a")`` pickles differently depending on
    whether the two strings are one object. Here every equal ``str``/``bytes`` becomes one
    object (interned literals already are) and every tuple is rebuilt fresh (never shared),
    so equal values always give equal bytes.
    """
    if isinstance(obj, tuple | list):
        return tuple(_canonical(x, shared) for x in obj)
    if type(obj) in (str, bytes):
        return shared.setdefault((type(obj), obj), obj)
    if obj is None or type(obj) in (int, bool):
        return obj
    raise TypeError(
        f"sha256_hash: cannot hash a {type(obj).__name__}; expected tuples, str, bytes, "
        "int, bool or None"
    )


def sha256_hash(value: object) -> bytes:
    """SHA-256 of the canonical pickle of ``value``: 32 bytes, the same in every process.

    Equal to upstream's ``sha256`` whenever ``value`` shares no object between two places
    (the normal case); where upstream's result would depend on object identity, this one
    depends only on the value.
    """
    data = pickle.dumps(_canonical(value, {}), protocol=PICKLE_PROTOCOL)
    return hashlib.sha256(data).digest()


def root_hash(hash_fn: HashFn = sha256_hash) -> bytes:
    """The parent of every first block: the hash of ``PYTHONHASHSEED`` when it is set (so a
    deployment can choose its own root), else of the fixed :data:`ROOT_SEED`.

    Never random bytes (upstream ``classic`` draws 32 random bytes per process when the
    variable is unset), so that keys are reproducible across processes and runs; the spec
    uses this rule in both profiles.
    """
    seed = os.environ.get("PYTHONHASHSEED")
    return hash_fn(ROOT_SEED if seed is None else seed)


ROOT_HASH = root_hash()


# --------------------------------------------------------------------------- extra keys


@dataclass(frozen=True)
class LoRARequest:
    """The adapter a request runs with. The same tokens under two adapters are two KVs."""

    name: str
    path: str = ""


@dataclass(frozen=True)
class MultiModalItem:
    """A multimodal input occupying prompt positions ``[offset, offset + length)``.

    ``identifier`` names the item's content (upstream: the mm hash). Placeholder tokens are
    the same for every image, so without this key two prompts with different images would
    share blocks.
    """

    identifier: str
    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 1:
            raise ValueError(
                f"MultiModalItem {self.identifier!r}: offset {self.offset} and length "
                f"{self.length}, expected offset >= 0 and length >= 1"
            )


def tags_extra_keys(profile: Profile) -> bool:
    """Whether extra keys carry their kind (``current``) or are bare (``classic``).

    Bare keys can collide across kinds: a LoRA named ``"x"`` and a cache salt ``"x"`` both
    contribute ``"x"`` to the first block, so two unrelated requests share every block.
    Tagging (``("lora", ...)``, ``("cache_salt", ...)``) makes that impossible.
    """
    return profile.tag_extra_keys


def block_extra_keys(
    start: int,
    end: int,
    *,
    lora: LoRARequest | None = None,
    cache_salt: str | None = None,
    mm_items: Sequence[MultiModalItem] = (),
    profile: Profile,
) -> tuple[object, ...] | None:
    """The extra keys of the block covering tokens ``[start, end)``, or ``None``.

    Order: LoRA, multimodal items, cache salt (upstream's order).

    * **LoRA, every block.** The adapter changes every layer's K/V, so every block of an
      adapter's request differs from the base model's, not only the first.
    * **Multimodal items overlapping the block**, each with its offset *relative to the
      block start* (negative when the item began in an earlier block): the same image at
      another position inside otherwise identical placeholder blocks is other content.
    * **Cache salt, only the block starting at token 0, and only when non-empty.** Chaining
      carries it into every later key, so salting one block isolates the whole prefix; an
      empty salt means "no salt" and must share with unsalted requests.
    """
    tagged = tags_extra_keys(profile)
    keys: list[object] = []
    if lora is not None:
        keys.append(("lora", lora.name, lora.path) if tagged else lora.name)
    for item in mm_items:
        if item.offset < end and item.offset + item.length > start:
            rel = item.offset - start
            keys.append(("mm", item.identifier, rel) if tagged else (item.identifier, rel))
    if start == 0 and cache_salt:
        keys.append(("cache_salt", cache_salt) if tagged else cache_salt)
    return tuple(keys) if keys else None


# --------------------------------------------------------------------------- hashing


def hash_block_tokens(
    parent: bytes | None,
    token_ids: Sequence[int],
    extra_keys: tuple[object, ...] | None = None,
    hash_fn: HashFn = sha256_hash,
) -> bytes:
    """The hash of one full block, chained to its parent's.

    The parent's hash goes in so that equal blocks after different prefixes get different
    keys: attention makes a block's K/V depend on every earlier token. A missing (or empty)
    parent means "first block" and is replaced by the fixed root hash.
    """
    return hash_fn((parent or root_hash(hash_fn), tuple(token_ids), extra_keys))


def block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    *,
    known: Sequence[bytes] = (),
    lora: LoRARequest | None = None,
    cache_salt: str | None = None,
    mm_items: Sequence[MultiModalItem] = (),
    profile: Profile,
    hash_fn: HashFn = sha256_hash,
) -> list[bytes]:
    """Hashes of the full blocks of ``token_ids`` after the ``known`` ones, in order.

    Only *full* blocks are hashed: a partial block's content is not final (the next token
    lands in it), so a key for it would name data that is about to change. Hashing resumes
    from ``len(known) * block_size``, chaining from the last known hash, so appending
    tokens only ever adds keys.
    """
    if block_size < 1:
        raise ValueError(f"block_hashes: block_size {block_size}, expected >= 1")
    out: list[bytes] = []
    parent = known[-1] if known else None
    start = len(known) * block_size
    while start + block_size <= len(token_ids):
        end = start + block_size
        extra = block_extra_keys(
            start, end, lora=lora, cache_salt=cache_salt, mm_items=mm_items, profile=profile
        )
        parent = hash_block_tokens(parent, token_ids[start:end], extra, hash_fn)
        out.append(parent)
        start = end
    return out
