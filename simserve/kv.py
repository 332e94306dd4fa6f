"""Paged KV memory of one replica: equal blocks allocated on demand and freed on finish or preemption, and a
prefix cache of shared blocks, as vLLM's block manager with automatic prefix caching does.

Private blocks are counted, not named: a request holds `ceil(kv_tokens / block_tokens)` blocks. Shared blocks
come in units: a unit is a run of blocks whose content is identified by a key chained over the prompt prefix (a
hash of the prefix, as vLLM hashes each full block with its parent's hash). Units are reference-counted; a unit
nobody holds stays cached and is evicted least recently freed first, only when an allocation needs its blocks.

Invariant: used + free + evictable = capacity, where `used` = private blocks of running requests + blocks of
units held by at least one running request.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


def blocks_for(tokens: int, block_tokens: int) -> int:
    """Blocks needed to hold `tokens` tokens (ceiling division)."""
    return -(-tokens // block_tokens)


class KvBlockPool:
    """Block accounting for one replica, with an optional prefix cache."""

    __slots__ = ("capacity_blocks", "block_tokens", "used_blocks", "evictable_blocks", "prefix_caching",
                 "_units", "_evictable", "num_evicted_units")

    def __init__(self, capacity_blocks: int, block_tokens: int, prefix_caching: bool = False) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be > 0, got {capacity_blocks}")
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be > 0, got {block_tokens}")
        self.capacity_blocks = capacity_blocks
        self.block_tokens = block_tokens
        self.prefix_caching = prefix_caching
        self.used_blocks = 0
        self.evictable_blocks = 0
        self._units: dict[int, list[int]] = {}  # key -> [blocks, references]
        self._evictable: OrderedDict[int, int] = OrderedDict()  # unreferenced units, least recently freed first
        self.num_evicted_units = 0

    @property
    def free_blocks(self) -> int:
        """Blocks holding nothing."""
        return self.capacity_blocks - self.used_blocks - self.evictable_blocks

    @property
    def available_blocks(self) -> int:
        """Blocks an allocation can get: free ones plus cached ones nobody holds (evicted on demand)."""
        return self.capacity_blocks - self.used_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.block_tokens

    def allocate(self, num_blocks: int) -> None:
        """Take `num_blocks` blocks for private use, evicting cached units if free blocks do not suffice; the
        caller has checked `available_blocks`."""
        if num_blocks < 0 or num_blocks > self.available_blocks:
            raise RuntimeError(f"cannot allocate {num_blocks} blocks with {self.available_blocks} available")
        while num_blocks > self.free_blocks:
            key, blocks = self._evictable.popitem(last=False)
            del self._units[key]
            self.evictable_blocks -= blocks
            self.num_evicted_units += 1
        self.used_blocks += num_blocks

    def release(self, num_blocks: int) -> None:
        """Return `num_blocks` private blocks to the free pool."""
        if num_blocks < 0 or num_blocks > self.used_blocks:
            raise RuntimeError(f"cannot release {num_blocks} blocks with {self.used_blocks} in use")
        self.used_blocks -= num_blocks

    # --------------------------------------------------------------------------------------------- prefix cache

    def cached_units(self, keys: Sequence[int]) -> int:
        """How many leading units of a prompt are cached (the prefix match stops at the first miss)."""
        units = self._units
        n = 0
        for key in keys:
            if key not in units:
                break
            n += 1
        return n

    def unheld_blocks(self, keys: Sequence[int]) -> int:
        """Blocks of these cached units that nobody holds (acquiring them takes them out of `available`)."""
        return sum(self._evictable.get(k, 0) for k in keys)

    def acquire(self, keys: Sequence[int]) -> int:
        """Hold these cached units (a prefix hit); returns their blocks."""
        total = 0
        for key in keys:
            entry = self._units[key]
            if entry[1] == 0:
                del self._evictable[key]
                self.evictable_blocks -= entry[0]
                self.used_blocks += entry[0]
            entry[1] += 1
            total += entry[0]
        return total

    def insert(self, key: int, num_blocks: int) -> bool:
        """Turn `num_blocks` of the caller's private blocks into a cached unit it holds. Returns False (the blocks
        stay private) if the unit is already cached, computed by another request meanwhile."""
        if key in self._units:
            return False
        self._units[key] = [num_blocks, 1]
        return True

    def release_units(self, keys: Sequence[int]) -> None:
        """Drop one hold on each unit; a unit nobody holds becomes evictable. Give the keys last unit first, so
        a prefix's tail is evicted before its head (as vLLM frees a sequence's blocks in reverse)."""
        for key in keys:
            entry = self._units[key]
            entry[1] -= 1
            if entry[1] == 0:
                self.used_blocks -= entry[0]
                self.evictable_blocks += entry[0]
                self._evictable[key] = entry[0]

    def held_unit_blocks(self) -> int:
        """Blocks of units held by at least one request (for the conservation check)."""
        return sum(b for b, refs in self._units.values() if refs > 0)

    def check(self) -> None:
        assert 0 <= self.used_blocks <= self.capacity_blocks
        assert self.evictable_blocks == sum(self._evictable.values())
        assert all(self._units[k][1] == 0 for k in self._evictable)
        assert self.used_blocks + self.free_blocks + self.evictable_blocks == self.capacity_blocks
        assert self.free_blocks >= 0
