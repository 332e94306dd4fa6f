"""Paged KV memory of one replica: the block pool, its free queue and prefix cache, and every KV hold a request has.

It follows vLLM V1's block pool (vllm/v1/core/block_pool.py, kv_cache_manager.py) block for block:

- Free blocks wait in one queue. An allocation pops from its front. A freed request's blocks that are cached
  (full blocks whose hash was computed) are appended at its back, last block first, so the tail of a sequence is
  evicted before its head and older sequences before newer ones; its uncached blocks (a partial last block; every
  block when prefix caching is off) go to the front, to be reused first (vLLM 0.33's BlockPool.free_blocks). A
  popped block that was cached loses its cache entry then: eviction is lazy, in queue order.
- Cached blocks are found by a key chained over the sequence (vLLM hashes each full block with its parent's
  hash): a lookup takes the leading run of a request's chain that is cached, and a hit on a block nobody holds
  takes it out of the queue. A request's full blocks are cached as they are scheduled; two requests computing the
  same block keep two copies, and a lookup takes the oldest.

For speed, blocks are counted, not named. A run of blocks that share a fate is one `Extent`: a cached unit (a key
covering `size` blocks: one block under a vLLM-style per-block chain, a 512-token unit of a Mooncake trace, or the
blocks a preempted request kept), or a run of uncached free blocks. Popping part of a cached unit removes its last
blocks (they were freed first) and leaves a shorter unit whose head still hits. A request's blocks are a `KvHold`:
the cached units it holds, in chain order, then private blocks.

The prefix cache is a dictionary from key to copies for the keys requests can share (prompt units). The blocks a
preempted request kept are found only by its own readmission, so their unit's key is the list of its copies itself,
held in the request's chain: such a unit is cached, looked up and evicted without a dictionary entry.

Invariant: free_blocks + blocks of units held by at least one request + private blocks of every hold = capacity.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, TypeVar

T = TypeVar("T")


def blocks_for(tokens: int, block_tokens: int) -> int:
    """Blocks needed to hold `tokens` tokens (ceiling division)."""
    return -(-tokens // block_tokens)


class Extent:
    """A run of blocks in the free queue or in a hold: a cached unit (`key` set: the first `size` of the unit's
    blocks; `refs` requests hold it) or, with `key` None, uncached free blocks."""

    __slots__ = ("key", "size", "refs", "pos")

    def __init__(self, key: object, size: int, refs: int = 0) -> None:
        self.key = key  # an int, or None; the object the chain holds (see KvHold)
        self.size = size
        self.refs = refs
        self.pos = -1  # where it waits in the free queue (KvBlockPool._queue), -1 when it is not there


# What a lookup that hits nothing returns (most of a saturated replica's lookups): one shared empty list, never
# appended to, where each lookup made and freed its own.
NO_EXTENTS: Final[list[Extent]] = []


def added(items: list[T], shared: list[T], item: T) -> list[T]:
    """`items` with `item` appended, where `items` may be `shared`, an empty list many owners start with and
    nobody appends to: a list of its own in its place, else `items` itself (the planner's plans use it too)."""
    if items is shared:
        return [item]
    items.append(item)
    return items


class KvHold:
    """One request's KV on one replica.

    `chain` lists the cacheable units of its sequence in order, as (key, blocks): prompt units whose keys other
    requests may share, then units of its own kept when it was preempted (keyed by the list of their cached copies,
    which only this chain holds). `units` are the cached units it holds (a leading run of the chain; the last may be
    shorter than its chain entry if it was hit after a partial eviction), covering its first `unit_blocks` blocks;
    `private_blocks` follow them.

    Shared keys are ints, typed `object` here so that the compiled engine passes on the very object the chain holds:
    an int it unboxed would be boxed anew for each dictionary call, and the prefix cache, whose keys are these
    objects, would then compare every found key by value (about 500k int comparisons in BLIS's saturated 10k run).
    """

    __slots__ = ("chain", "ends", "units", "unit_blocks", "private_blocks")

    def __init__(self, chain: list[tuple[object, int]] | None = None) -> None:
        self.chain: list[tuple[object, int]] = chain or []
        self.ends: list[int] = []  # cumulative blocks at the end of each chain unit
        total = 0
        for _, blocks in self.chain:
            total += blocks
            self.ends.append(total)
        self.units: list[Extent] = []
        self.unit_blocks = 0
        self.private_blocks = 0

    @property
    def num_blocks(self) -> int:
        return self.unit_blocks + self.private_blocks

    def append_chain(self, key: object, blocks: int) -> None:
        self.chain.append((key, blocks))
        self.ends.append((self.ends[-1] if self.ends else 0) + blocks)


class KvBlockPool:
    """Block accounting for one replica: the free queue, the prefix cache and allocation."""

    __slots__ = ("capacity_blocks", "block_tokens", "prefix_caching", "free_blocks", "evictable_blocks",
                 "_front", "_queue", "_head", "_base", "_live", "_compact_after", "_cache",
                 "num_evicted_units")

    def __init__(self, capacity_blocks: int, block_tokens: int, prefix_caching: bool = False,
                 compact_after: int = 1024) -> None:
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be > 0, got {capacity_blocks}")
        if block_tokens <= 0:
            raise ValueError(f"block_tokens must be > 0, got {block_tokens}")
        self.capacity_blocks = capacity_blocks
        self.block_tokens = block_tokens
        self.prefix_caching = prefix_caching
        self.free_blocks = capacity_blocks  # the queue's length, cached blocks nobody holds included
        self.evictable_blocks = 0  # cached blocks in the queue
        # The free queue: `_front` uncached blocks at its very front, then the extents waiting in `_queue` from
        # index `_head` on, in order. Uncached blocks pushed to the front, and the blocks popped from it, are
        # counted there without touching the list (two adjacent runs of uncached blocks are the same queue as one
        # run: blocks are counted). A list read from a moving head, not a linked dictionary: a pop is an index and
        # a push an append. An extent knows its place (`pos`, counted from `_base`, the place of `_queue[0]`); a
        # prefix hit takes a unit out by forgetting its place, and the entry left behind is skipped when the head
        # reaches it. `_live` counts the extents waiting; past `compact_after` entries, the list is compacted when
        # the entries popped or left behind outnumber them, so its length stays within about twice the queue's.
        self._front = capacity_blocks
        self._queue: list[Extent] = []
        self._head = 0
        self._base = 0
        self._live = 0
        self._compact_after = compact_after
        self._cache: dict[object, list[Extent]] = {}  # key -> copies, oldest first
        self.num_evicted_units = 0

    # ------------------------------------------------------------------------------------------ counts

    @property
    def used_blocks(self) -> int:
        """Blocks held by running requests (private blocks and held cached units)."""
        return self.capacity_blocks - self.free_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.capacity_blocks * self.block_tokens

    # ------------------------------------------------------------------------------------------ the free queue

    def allocate(self, num_blocks: int) -> None:
        """Pop `num_blocks` blocks from the front of the free queue (evicting cached blocks popped); the caller
        has checked `free_blocks`."""
        if num_blocks <= 0:
            if num_blocks < 0:
                raise RuntimeError(f"cannot allocate {num_blocks} blocks")
            return
        if num_blocks > self.free_blocks:
            raise RuntimeError(f"cannot allocate {num_blocks} blocks with {self.free_blocks} free")
        self.free_blocks -= num_blocks
        front = self._front
        if front >= num_blocks:
            self._front = front - num_blocks
            return
        num_blocks -= front
        self._front = 0
        queue = self._queue
        head = self._head
        at = self._base + head
        while num_blocks:
            ext = queue[head]
            if ext.pos != at:  # left behind by a prefix hit
                head += 1
                at += 1
                continue
            if ext.size > num_blocks:
                ext.size -= num_blocks  # a cached unit loses its last blocks; its head stays cached
                if ext.key is not None:
                    self.evictable_blocks -= num_blocks
                break
            num_blocks -= ext.size
            head += 1
            at += 1
            ext.pos = -1
            self._live -= 1
            if ext.key is not None:
                self.evictable_blocks -= ext.size
                self._uncache(ext)
            ext.size = 0
        self._head = head
        if head > self._compact_after and 2 * head > len(queue):
            del queue[:head]
            self._base += head
            self._head = 0

    def _uncache(self, ext: Extent) -> None:
        key = ext.key  # the object the cache's entry was made with (see KvHold)
        if isinstance(key, list):  # a hold's own unit: its copies are its key
            key.remove(ext)
        else:
            copies = self._cache[key]
            if len(copies) == 1:
                del self._cache[key]
            else:
                copies.remove(ext)
        self.num_evicted_units += 1

    def _append(self, ext: Extent) -> None:
        """Queue an extent at the back."""
        queue = self._queue
        waiting = len(queue) - self._head
        if waiting > self._compact_after and waiting > 2 * self._live:  # mostly entries left behind by hits
            queue = self._queue = self._waiting()
            for i, e in enumerate(queue):
                e.pos = i
            self._head = self._base = 0
        ext.pos = self._base + len(queue)
        queue.append(ext)
        self._live += 1

    def _push_free(self, num_blocks: int, front: bool) -> None:
        """Put blocks no lookup will find in the free queue: uncached ones at the front (reused first), or, at the
        back, full blocks cached under a finished request's own keys (evicted in turn, never hit)."""
        if num_blocks <= 0:
            return
        self.free_blocks += num_blocks
        if front or not self._live:  # the front run (at the back too when no extent follows it)
            self._front += num_blocks
            return
        end = self._queue[-1]  # waiting: an uncached run leaves the queue only by being popped
        if end.key is None:
            end.size += num_blocks
            return
        self._append(Extent(None, num_blocks))

    def _push_unit(self, ext: Extent) -> None:
        self.free_blocks += ext.size
        self.evictable_blocks += ext.size
        self._append(ext)

    # ------------------------------------------------------------------------------------------ holds

    def _copies(self, key: object) -> list[Extent] | None:
        """A unit's cached copies, oldest first: a hold's own unit's are its key (a list); a shareable key's are in
        the dictionary (None if it has none)."""
        return key if isinstance(key, list) else self._cache.get(key)

    def lookup(self, hold: KvHold, max_blocks: int) -> tuple[list[Extent], int, int]:
        """The leading cached run of the hold's chain, at most `max_blocks` blocks (vLLM leaves the last token of a
        sequence to compute: max_blocks = (tokens - 1) // block_tokens). Returns (units, blocks hit, blocks hit
        that nobody holds: acquiring them takes them out of the free queue)."""
        if not self.prefix_caching or not hold.chain:
            return NO_EXTENTS, 0, 0
        units = NO_EXTENTS  # a list of its own from the first hit
        hit = evictable = 0
        for key, blocks in hold.chain:
            copies = self._copies(key)
            if not copies:
                break
            ext = copies[0]
            if hit + ext.size > max_blocks:
                break
            units = added(units, NO_EXTENTS, ext)
            hit += ext.size
            if ext.refs == 0:
                evictable += ext.size
            if ext.size < blocks:
                break  # the unit lost its tail: the chain stops here
        return units, hit, evictable

    def acquire(self, hold: KvHold, units: Sequence[Extent]) -> None:
        """The hold takes these cached units (a prefix hit found by `lookup`)."""
        for ext in units:
            if ext.refs == 0:
                assert ext.pos >= 0, "a cached unit nobody holds waits in the free queue"
                ext.pos = -1  # its entry stays behind, skipped when the head reaches it
                self._live -= 1
                self.free_blocks -= ext.size
                self.evictable_blocks -= ext.size
            ext.refs += 1
            hold.units.append(ext)
            hold.unit_blocks += ext.size

    def grow(self, hold: KvHold, num_blocks: int) -> None:
        """Allocate `num_blocks` private blocks to the hold."""
        self.allocate(num_blocks)
        hold.private_blocks += num_blocks

    def cache_computed(self, hold: KvHold, computed_blocks: int) -> None:
        """Cache the hold's chain units that its first `computed_blocks` blocks now cover (vLLM caches a block's
        hash when the block is scheduled full): the hold's private blocks under them become cached units it holds.
        A unit hit short (its tail evicted) grows back when this request, its only holder, recomputes the tail."""
        if not self.prefix_caching:
            return
        i = len(hold.units)
        chain, ends = hold.chain, hold.ends
        if i and hold.unit_blocks < ends[i - 1]:
            last = hold.units[-1]
            if computed_blocks < ends[i - 1] or last.refs != 1 or last.key is None:
                return
            grow = ends[i - 1] - hold.unit_blocks
            last.size += grow
            hold.unit_blocks += grow
            hold.private_blocks -= grow
        cache = self._cache
        while i < len(chain) and ends[i] <= computed_blocks:
            key, blocks = chain[i]
            ext = Extent(key, blocks, 1)
            if isinstance(key, list):  # a unit of the hold's own: its copies are its key, not in the dictionary
                key.append(ext)
            else:
                copies = cache.get(key)
                if copies is None:
                    cache[key] = [ext]
                else:
                    copies.append(ext)
            hold.units.append(ext)
            hold.unit_blocks += blocks
            hold.private_blocks -= blocks
            i += 1

    def keep(self, hold: KvHold, cached_tokens: int) -> None:
        """Before a preempted request frees its KV: its full blocks whose hash was computed (`cached_tokens`)
        stay cached, under keys of its own after its prompt units, so that readmitting it recomputes only what was
        evicted meanwhile."""
        if not self.prefix_caching:
            return
        full = cached_tokens // self.block_tokens
        self.cache_computed(hold, full)
        i = len(hold.units)
        if i and hold.unit_blocks < hold.ends[i - 1]:
            return  # a unit short of its chain entry: what follows cannot be found by a lookup
        own = full - hold.unit_blocks
        if own <= 0 or len(hold.chain) > i:
            return
        hold.append_chain([], own)  # its key: the list of its cached copies (see KvHold)
        self.cache_computed(hold, full)

    def release(self, hold: KvHold, cached_tokens: int = 0) -> None:
        """Free all of the hold's blocks, last first. Its first `cached_tokens` tokens' full blocks were cached:
        private ones among them (under keys of its own) go to the back of the free queue, the rest of its private
        blocks to the front; then its units, each to the back, still cached, when its last holder lets go."""
        own = 0
        if self.prefix_caching:
            own = min(max(cached_tokens // self.block_tokens - hold.unit_blocks, 0), hold.private_blocks)
        self._push_free(hold.private_blocks - own, front=True)
        self._push_free(own, front=False)
        for ext in reversed(hold.units):
            ext.refs -= 1
            if ext.refs == 0:
                self._push_unit(ext)
        hold.units = []
        hold.unit_blocks = 0
        hold.private_blocks = 0

    # ------------------------------------------------------------------------------------------ looking ahead

    def releasable_blocks(self, hold: KvHold, num_blocks: int, released: dict[Extent, int]) -> int:
        """Of a hold's `num_blocks` blocks, those that `release` would free if the holds already counted in
        `released` (unit -> holds let go) had been released: all but the units somebody else still holds. Counts
        this hold's units into `released`. Changes nothing in the pool."""
        held = 0
        for ext in hold.units:
            gone = released.get(ext, 0)
            if ext.refs - gone > 1:
                held += ext.size
            released[ext] = gone + 1
        return num_blocks - held

    def held_hit_bound(self, hold: KvHold | None, released: dict[Extent, int]) -> int:
        """An upper bound on the blocks of the hold's chain that a lookup would find held by running requests
        (which admitting it does not take from the free blocks), with the holds in `released` let go; it cannot
        grow while nothing is admitted or computed. Changes nothing in the pool."""
        if hold is None or not self.prefix_caching:
            return 0
        total = 0
        for key, _ in hold.chain:
            copies = self._copies(key)
            if not copies:
                continue
            if len(copies) == 1:  # the common case, without a generator
                e = copies[0]
                if e.refs > released.get(e, 0):
                    total += e.size
            else:
                total += max((e.size for e in copies if e.refs > released.get(e, 0)), default=0)
        return total

    # ------------------------------------------------------------------------------------------ checks

    def _waiting(self) -> list[Extent]:
        """The extents in the free queue, front first."""
        return [e for i, e in enumerate(self._queue[self._head:], self._base + self._head) if e.pos == i]

    def held_unit_blocks(self, holds: Iterable[KvHold]) -> int:
        """Blocks of the cached units that `holds` (every hold of the pool's running requests) hold, each unit
        once. Checks that each such unit is held by as many of them as its `refs` say and waits in no queue, and
        that every unit of the dictionary with holders is among them (a hold's own units are not in it)."""
        held: dict[Extent, int] = {}
        for hold in holds:
            for ext in hold.units:
                held[ext] = held.get(ext, 0) + 1
        for ext, n in held.items():
            assert ext.refs == n and ext.pos == -1 and ext.key is not None, (ext.key, ext.refs, n, ext.pos)
        assert all(e in held for copies in self._cache.values() for e in copies if e.refs > 0)
        return sum(ext.size for ext in held)

    def cached_blocks(self, key: object) -> int:
        """Blocks of the oldest cached copy of a unit (0 if not cached)."""
        copies = self._copies(key)
        return copies[0].size if copies else 0

    def check(self) -> None:
        assert self._front >= 0
        waiting = self._waiting()
        assert len(waiting) == self._live, (len(waiting), self._live)
        assert all(e.pos != i for i, e in enumerate(self._queue[:self._head], self._base))  # popped or left
        queued = self._front + sum(e.size for e in waiting)
        assert queued == self.free_blocks, (queued, self.free_blocks)
        assert self.evictable_blocks == sum(e.size for e in waiting if e.key is not None)
        assert all(e.refs == 0 and e.size > 0 for e in waiting)
        assert 0 <= self.free_blocks <= self.capacity_blocks
        for key, copies in self._cache.items():
            assert copies and all(e.key == key for e in copies)
