"""Paged KV memory of one replica: a fixed number of equal blocks, allocated on demand and freed on finish or
preemption, as vLLM's block manager does.

Blocks are counted, not named: a request holds `ceil(kv_tokens / block_tokens)` private blocks. Prefix sharing
(hashed, reference-counted blocks that stay cached after free, evicted least recently used first) extends this
manager with a third pool beside `used` and `free`; the invariant below then reads used + free + evictable =
capacity.
"""

from __future__ import annotations


def blocks_for(tokens: int, block_tokens: int) -> int:
    """Blocks needed to hold `tokens` tokens (ceiling division)."""
    return -(-tokens // block_tokens)


class KvBlockPool:
    """Block accounting for one replica. Invariant: 0 <= used <= capacity and used + free == capacity."""

    __slots__ = ("capacity_blocks", "block_tokens", "used_blocks")

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be > 0, got {capacity_blocks}")
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be > 0, got {block_tokens}")
        self.capacity_blocks = capacity_blocks
        self.block_tokens = block_tokens
        self.used_blocks = 0

    @property
    def free_blocks(self) -> int:
        return self.capacity_blocks - self.used_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.block_tokens

    def can_allocate(self, num_blocks: int) -> bool:
        return num_blocks <= self.free_blocks

    def allocate(self, num_blocks: int) -> None:
        """Take `num_blocks` free blocks; the caller has checked `can_allocate`."""
        if num_blocks < 0 or num_blocks > self.free_blocks:
            raise RuntimeError(f"cannot allocate {num_blocks} blocks with {self.free_blocks} free")
        self.used_blocks += num_blocks

    def release(self, num_blocks: int) -> None:
        """Return `num_blocks` blocks to the free pool."""
        if num_blocks < 0 or num_blocks > self.used_blocks:
            raise RuntimeError(f"cannot release {num_blocks} blocks with {self.used_blocks} in use")
        self.used_blocks -= num_blocks
