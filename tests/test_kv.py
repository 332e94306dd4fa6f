"""The KV block pool on its own: vLLM 0.33's free-queue order (uncached blocks freed to the front, cached ones to
the back, tail first; allocation pops the front and evicts what it pops), prefix lookups over a hold's chain,
caching at schedule time, keep-on-preempt, and a stateful model check of block conservation."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from simserve.engine.kv import KvBlockPool, KvHold, blocks_for


def hold_with(pool: KvBlockPool, chain: list[tuple[int, int]], tokens: int) -> KvHold:
    """A hold that computed `tokens` tokens of a sequence with this chain (cached as vLLM does at schedule)."""
    h = KvHold(list(chain))
    pool.grow(h, blocks_for(tokens, pool.block_tokens))
    pool.cache_computed(h, tokens // pool.block_tokens)
    return h


def test_blocks_for_is_ceiling_division():
    assert [blocks_for(t, 16) for t in (0, 1, 16, 17, 32, 33)] == [0, 1, 1, 2, 2, 3]


@pytest.mark.parametrize(("capacity", "block"), [(0, 16), (-1, 16), (10, 0)])
def test_constructor_rejects_nonpositive_sizes(capacity, block):
    with pytest.raises(ValueError):
        KvBlockPool(capacity, block)


def test_allocate_beyond_free_raises_and_changes_nothing():
    pool = KvBlockPool(10, 16)
    pool.allocate(4)
    with pytest.raises(RuntimeError):
        pool.allocate(7)
    with pytest.raises(RuntimeError):
        pool.allocate(-1)
    assert (pool.free_blocks, pool.used_blocks) == (6, 4)
    pool.check()


def test_lookup_takes_the_leading_cached_run_and_leaves_the_last_token_to_compute():
    pool = KvBlockPool(20, 16, prefix_caching=True)
    a = hold_with(pool, [(1, 1), (2, 1), (3, 1)], 48)  # three full blocks, all cached
    assert [u.key for u in a.units] == [1, 2, 3] and a.private_blocks == 0
    b = KvHold([(1, 1), (2, 1), (9, 1)])
    units, hit, evictable = pool.lookup(b, (48 - 1) // 16)
    assert [u.key for u in units] == [1, 2] and (hit, evictable) == (2, 0)  # held by a: not in the free queue
    c = KvHold([(1, 1), (2, 1), (3, 1)])
    units, hit, _ = pool.lookup(c, (48 - 1) // 16)  # a 48-token prompt: at most 2 blocks, its last is recomputed
    assert hit == 2
    units, hit, _ = pool.lookup(c, (49 - 1) // 16)
    assert hit == 3


def test_freed_uncached_blocks_go_to_the_front_and_cached_ones_to_the_back_tail_first():
    pool = KvBlockPool(10, 4, prefix_caching=True)
    a = hold_with(pool, [(1, 1), (2, 1)], 10)  # blocks: unit 1, unit 2, a partial block (2 tokens)
    assert (a.unit_blocks, a.private_blocks) == (2, 1)
    pool.release(a, cached_tokens=10)
    assert pool.free_blocks == 10 and pool.evictable_blocks == 2
    # Queue: [partial block][7 never used][unit 2][unit 1]: 8 allocations leave both units cached ...
    pool.allocate(8)
    assert pool.cached_blocks(1) == 1 and pool.cached_blocks(2) == 1
    # ... the next pops unit 2 (the tail, freed first), the one after unit 1.
    pool.allocate(1)
    assert pool.cached_blocks(2) == 0 and pool.cached_blocks(1) == 1
    pool.allocate(1)
    assert pool.cached_blocks(1) == 0 and pool.free_blocks == 0
    pool.check()


def test_blocks_freed_to_the_front_are_reused_before_a_cached_unit_each_time():
    """The front run of uncached blocks (a counter, not an extent) stays ahead of every cached unit however many
    frees join it, and an allocation that outgrows it goes on into the units behind it, in queue order."""
    pool = KvBlockPool(8, 4, prefix_caching=True)
    a = hold_with(pool, [(1, 1)], 6)  # unit 1 and a partial block
    b = KvHold()
    pool.grow(b, 6)
    assert pool.free_blocks == 0
    pool.release(a, cached_tokens=6)  # queue: [partial][unit 1]
    c = KvHold()
    pool.grow(c, 1)
    assert pool.cached_blocks(1) == 1  # the partial block went first
    pool.release(b)  # queue: [6 uncached][unit 1]
    pool.release(c)  # queue: [7 uncached][unit 1]
    pool.check()
    pool.allocate(7)
    assert pool.cached_blocks(1) == 1 and pool.free_blocks == 1
    pool.allocate(1)
    assert pool.cached_blocks(1) == 0 and pool.free_blocks == 0
    pool.check()
    pool._push_free(3, front=False)  # nothing queued: the back is the front run too
    pool._push_free(2, front=True)
    assert pool.free_blocks == 5
    pool.check()
    pool.allocate(5)
    assert pool.free_blocks == 0
    pool.check()


def test_a_hit_on_blocks_nobody_holds_takes_them_out_of_the_free_queue():
    pool = KvBlockPool(8, 4, prefix_caching=True)
    a = hold_with(pool, [(1, 1), (2, 1)], 8)
    pool.release(a, cached_tokens=8)
    b = KvHold([(1, 1), (2, 1)])
    units, hit, evictable = pool.lookup(b, 2)
    assert (hit, evictable) == (2, 2)
    pool.acquire(b, units)
    assert pool.free_blocks == 6 and pool.evictable_blocks == 0 and b.unit_blocks == 2
    pool.allocate(6)  # the never-used blocks; the held units are safe
    assert pool.cached_blocks(1) == 1 and pool.cached_blocks(2) == 1
    pool.check()


def test_a_unit_popped_in_part_keeps_its_head_and_hits_short():
    pool = KvBlockPool(6, 4, prefix_caching=True)
    a = hold_with(pool, [(7, 4)], 16)  # one 4-block unit
    pool.release(a, cached_tokens=16)
    other = KvHold()
    pool.grow(other, 2 + 1)  # the 2 never-used blocks, then the unit's last block
    assert pool.cached_blocks(7) == 3
    b = KvHold([(7, 4), (8, 1)])
    units, hit, _ = pool.lookup(b, 10)
    assert hit == 3 and len(units) == 1  # the chain stops at the shortened unit
    pool.acquire(b, units)
    pool.release(other)
    pool.grow(b, 2)
    pool.cache_computed(b, 5)  # b recomputed the lost block and the next: the unit grows back, unit 8 is cached
    assert pool.cached_blocks(7) == 4 and pool.cached_blocks(8) == 1 and b.private_blocks == 0
    pool.check()


def test_two_requests_computing_the_same_block_keep_two_copies_and_lookup_takes_the_oldest():
    pool = KvBlockPool(8, 4, prefix_caching=True)
    a = hold_with(pool, [(1, 1)], 4)
    b = hold_with(pool, [(1, 1)], 4)  # computed concurrently (it missed): a second copy
    pool.release(b, cached_tokens=4)
    pool.release(a, cached_tokens=4)
    c = KvHold([(1, 1)])
    units, hit, _ = pool.lookup(c, 1)
    assert hit == 1 and units[0] is a.units[0] if a.units else True
    pool.allocate(6)  # never-used blocks
    pool.allocate(1)  # pops b's copy (freed first): a's copy still hits
    assert pool.cached_blocks(1) == 1
    pool.allocate(1)
    assert pool.cached_blocks(1) == 0
    pool.check()


def test_keep_caches_a_preempted_requests_full_blocks_under_keys_of_its_own():
    pool = KvBlockPool(12, 4, prefix_caching=True)
    a = hold_with(pool, [(1, 1)], 10)  # prompt unit 1, then 1 full private block and a partial one
    pool.keep(a, 10)
    assert len(a.chain) == 2 and a.chain[1][1] == 1  # own unit of 1 block after the prompt unit
    pool.release(a, cached_tokens=10)
    units, hit, _ = pool.lookup(a, (11 - 1) // 4)
    assert hit == 2  # readmitted, it recomputes only the partial block
    pool.check()


def test_the_cache_and_its_units_hold_the_very_key_objects_of_the_chain():
    """Chain keys pass through the (compiled) pool as the objects the chain holds, not as ints boxed anew: the
    cache's entries and their units are those objects, so a lookup finds its key by identity rather than comparing
    ints (the key here is outside CPython's small-int cache). A preempted request's own unit is keyed by the list
    of its cached copies, which its chain holds and no other request's can: it is not in the dictionary."""
    pool = KvBlockPool(64, 4, prefix_caching=True)
    key = 10**6 + 7
    a = hold_with(pool, [(key, 2)], 20)  # the prompt unit (2 blocks), then 3 private blocks
    pool.keep(a, 20)  # a preempted request's own unit after it
    own = a.chain[1][0]
    assert isinstance(own, list) and own == [a.units[1]] and a.units[1].key is own
    assert a.units[0].key is key
    assert list(pool._cache) == [key] and next(iter(pool._cache)) is key
    pool.release(a, cached_tokens=20)
    units, hit, _ = pool.lookup(a, (21 - 1) // 4)
    assert hit == 5 and [u.key for u in units] == [key, own]
    assert all(u.key is k for u, (k, _) in zip(units, a.chain, strict=True))
    pool.check()
    pool.allocate(pool.free_blocks)  # evicts every unit, the own one too (its list empties)
    assert own == [] and not pool._cache and pool.num_evicted_units == 2
    assert pool.lookup(a, 5) == ([], 0, 0)
    pool.check()


def test_without_prefix_caching_nothing_is_cached_and_frees_are_counts():
    pool = KvBlockPool(8, 4)
    a = hold_with(pool, [(1, 1)], 8)
    assert a.units == [] and a.private_blocks == 2
    pool.release(a, cached_tokens=8)
    assert pool.free_blocks == 8 and pool.evictable_blocks == 0
    assert pool.lookup(KvHold([(1, 1)]), 4) == ([], 0, 0)
    pool.check()


def _key_size(e):
    """An extent's key and size, a hold's own unit (keyed by its list of copies) named as such: two pools' own units
    are lists of different extents."""
    return ("own" if isinstance(e.key, list) else e.key), e.size


class PoolModel(RuleBasedStateMachine):
    """Random holds grow, cache, hit, keep and release: blocks are conserved after every operation. A twin pool
    compacts its free queue's list at every chance (the pool itself only past 1,024 entries): the two must hold
    the same extents in the same order, and hit the same blocks."""

    def __init__(self):
        super().__init__()
        self.pool = KvBlockPool(40, 4, prefix_caching=True)
        self.twin = KvBlockPool(40, 4, prefix_caching=True, compact_after=0)
        self.holds: list[tuple[KvHold, KvHold, int]] = []  # (hold, the twin's, tokens computed)

    @rule(keys=st.lists(st.integers(1, 6), min_size=0, max_size=4), tokens=st.integers(1, 30))
    def admit(self, keys, tokens):
        chain = [(k, 1) for k in keys]
        h, t = KvHold(list(chain)), KvHold(list(chain))
        units, hit, evictable = self.pool.lookup(h, (tokens - 1) // 4)
        assert [(e.key, e.size) for e in self.twin.lookup(t, (tokens - 1) // 4)[0]] == [
            (e.key, e.size) for e in units]
        need = blocks_for(tokens, 4) - hit + evictable
        if need > self.pool.free_blocks:
            return
        for pool, hold in ((self.pool, h), (self.twin, t)):
            pool.acquire(hold, pool.lookup(hold, (tokens - 1) // 4)[0])
            pool.grow(hold, blocks_for(tokens, 4) - hit)
            pool.cache_computed(hold, tokens // 4)
        self.holds.append((h, t, tokens))

    @precondition(lambda self: self.holds)
    @rule(i=st.integers(0, 100), keep=st.booleans())
    def free(self, i, keep):
        h, t, tokens = self.holds.pop(i % len(self.holds))
        for pool, hold in ((self.pool, h), (self.twin, t)):
            if keep:
                pool.keep(hold, tokens)
            pool.release(hold, tokens)

    @invariant()
    def conserved(self):
        private = sum(h.private_blocks for h, _, _ in self.holds)
        held = self.pool.held_unit_blocks([h for h, _, _ in self.holds])
        assert private + held + self.pool.free_blocks == self.pool.capacity_blocks
        self.pool.check()
        self.twin.check()
        assert [_key_size(e) for e in self.pool._waiting()] == [_key_size(e) for e in self.twin._waiting()]
        assert (self.pool.free_blocks, self.pool.evictable_blocks, self.pool.num_evicted_units) == (
            self.twin.free_blocks, self.twin.evictable_blocks, self.twin.num_evicted_units)


TestPoolModel = PoolModel.TestCase
TestPoolModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                  suppress_health_check=[HealthCheck.too_slow])


def test_looking_ahead_at_releases_counts_what_others_still_hold():
    """Two holds share prompt unit 1 (2 blocks); a has 3 private blocks, b 1. Releasing a would free its 3 private
    blocks only (b still holds the unit); releasing b after it frees b's private block and the unit. Nothing in the
    pool changes; the real releases then free exactly the predicted counts. A hold's hits held by running requests
    are bounded by the units others hold."""
    pool = KvBlockPool(16, 4, prefix_caching=True)
    a = hold_with(pool, [(1, 2)], 8 + 12)
    b = KvHold([(1, 2)])
    units, hit, _ = pool.lookup(b, 2)
    pool.acquire(b, units)
    pool.grow(b, 1)
    free0 = pool.free_blocks
    released: dict = {}
    assert pool.held_hit_bound(a, released) == 2  # unit 1, held by a and b
    assert pool.releasable_blocks(a, a.num_blocks, released) == 3
    assert pool.held_hit_bound(a, released) == 2  # b still holds it after a lets go
    assert pool.releasable_blocks(b, b.num_blocks, released) == 3
    assert pool.held_hit_bound(a, released) == 0  # nobody holds it once both let go
    assert pool.free_blocks == free0
    pool.release(a, cached_tokens=8)
    assert pool.free_blocks == free0 + 3
    pool.release(b, cached_tokens=8)
    assert pool.free_blocks == free0 + 6
    pool.check()
