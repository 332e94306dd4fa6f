"""KvBlockPool on its own: private block accounting, the prefix cache's units and references, LRU eviction, and a
stateful model check of the conservation invariant (used + free + evictable = capacity) over random operations."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, precondition, rule

from simserve.kv import KvBlockPool, blocks_for


def state(kv: KvBlockPool) -> tuple[int, int, int, int]:
    return kv.used_blocks, kv.free_blocks, kv.evictable_blocks, kv.available_blocks


def cached(kv: KvBlockPool, key: int) -> bool:
    return kv.cached_units([key]) == 1


def cache_units(kv: KvBlockPool, keys: list[int], blocks_per_unit: int = 1) -> None:
    """As a replica does for a computed prompt: allocate private blocks, turn them into held units."""
    kv.allocate(len(keys) * blocks_per_unit)
    for k in keys:
        assert kv.insert(k, blocks_per_unit)


# ----------------------------------------------------------------------------------------------- private blocks


def test_blocks_for_is_ceiling_division():
    assert [blocks_for(t, 16) for t in (0, 1, 15, 16, 17, 32, 33)] == [0, 1, 1, 1, 2, 2, 3]


@pytest.mark.parametrize("capacity, block", [(0, 16), (-1, 16), (10, 0), (10, -4)])
def test_constructor_rejects_nonpositive_sizes(capacity, block):
    with pytest.raises(ValueError):
        KvBlockPool(capacity, block)


def test_allocate_and_release_within_bounds():
    kv = KvBlockPool(10, 16)
    assert kv.capacity_tokens == 160
    assert state(kv) == (0, 10, 0, 10)
    kv.allocate(4)
    assert state(kv) == (4, 6, 0, 6)
    kv.allocate(6)
    assert state(kv) == (10, 0, 0, 0)
    kv.allocate(0)
    kv.release(7)
    assert state(kv) == (3, 7, 0, 7)
    kv.check()


def test_allocate_beyond_available_or_negative_raises_and_changes_nothing():
    kv = KvBlockPool(10, 16)
    kv.allocate(8)
    with pytest.raises(RuntimeError, match="cannot allocate 3 blocks with 2 available"):
        kv.allocate(3)
    with pytest.raises(RuntimeError):
        kv.allocate(-1)
    assert state(kv) == (8, 2, 0, 2)
    kv.check()


def test_release_more_than_used_or_negative_raises_and_changes_nothing():
    kv = KvBlockPool(10, 16)
    kv.allocate(3)
    with pytest.raises(RuntimeError, match="cannot release 4 blocks with 3 in use"):
        kv.release(4)
    with pytest.raises(RuntimeError):
        kv.release(-1)
    assert state(kv) == (3, 7, 0, 7)
    kv.check()


# ----------------------------------------------------------------------------------------------- prefix cache


def test_cached_units_stops_at_the_first_miss():
    kv = KvBlockPool(20, 16, prefix_caching=True)
    cache_units(kv, [1, 2, 3, 5])
    assert kv.cached_units([1, 2, 3]) == 3
    assert kv.cached_units([1, 2, 3, 4, 5]) == 3  # 5 is cached but comes after a miss
    assert kv.cached_units([9, 1, 2]) == 0
    assert kv.cached_units([1, 5]) == 2
    assert kv.cached_units([]) == 0


def test_insert_turns_private_blocks_into_a_held_unit_without_changing_counts():
    kv = KvBlockPool(20, 16, prefix_caching=True)
    kv.allocate(6)
    assert kv.insert(1, 2) is True
    assert kv.insert(2, 2) is True
    assert state(kv) == (6, 14, 0, 14)
    assert kv.held_unit_blocks() == 4
    kv.check()


def test_insert_refuses_a_key_already_cached():
    kv = KvBlockPool(20, 16, prefix_caching=True)
    kv.allocate(4)
    assert kv.insert(7, 2) is True
    assert kv.insert(7, 2) is False  # computed by another request meanwhile: the caller's blocks stay private
    assert kv.held_unit_blocks() == 2
    kv.release_units([7])
    assert kv.evictable_blocks == 2
    assert kv.insert(7, 2) is False  # still cached (evictable), still refused
    assert kv.evictable_blocks == 2 and kv.used_blocks == 2
    kv.check()


def test_acquire_takes_unreferenced_units_out_of_evictable_into_used():
    kv = KvBlockPool(20, 16, prefix_caching=True)
    cache_units(kv, [1, 2, 3], blocks_per_unit=2)
    kv.release_units([3, 2, 1])
    assert state(kv) == (0, 14, 6, 20)
    assert kv.unheld_blocks([1, 2]) == 4
    assert kv.acquire([1, 2]) == 4
    assert state(kv) == (4, 14, 2, 16)
    assert kv.unheld_blocks([1, 2, 3]) == 2
    # A second hold on a held unit moves nothing, but still reports the unit's blocks.
    assert kv.acquire([1]) == 2
    assert state(kv) == (4, 14, 2, 16)
    assert kv.held_unit_blocks() == 4
    kv.check()
    # The unit stays held until its last reference is dropped.
    kv.release_units([1])
    assert state(kv) == (4, 14, 2, 16)
    kv.release_units([2, 1])
    assert state(kv) == (0, 14, 6, 20)
    kv.check()


def test_available_blocks_is_free_plus_evictable():
    kv = KvBlockPool(12, 16, prefix_caching=True)
    cache_units(kv, [1, 2, 3])
    kv.allocate(2)
    kv.release_units([3, 2])
    assert kv.free_blocks == 7 and kv.evictable_blocks == 2 and kv.used_blocks == 3
    assert kv.available_blocks == kv.free_blocks + kv.evictable_blocks == 9
    kv.check()


def test_allocate_evicts_least_recently_freed_first_only_when_free_blocks_do_not_suffice():
    kv = KvBlockPool(6, 16, prefix_caching=True)
    cache_units(kv, [1, 2, 3])
    kv.release_units([3, 2, 1])  # last unit first: the tail is evicted before the head
    cache_units(kv, [4, 5])
    kv.release_units([5, 4])
    assert state(kv) == (0, 1, 5, 6)
    kv.allocate(1)  # a free block suffices: nothing evicted
    assert kv.num_evicted_units == 0
    assert kv.cached_units([1, 2, 3]) == 3 and kv.cached_units([4, 5]) == 2
    kv.allocate(1)  # evicts 3, the least recently freed
    assert kv.num_evicted_units == 1
    assert not cached(kv, 3)
    assert kv.cached_units([1, 2, 3]) == 2 and kv.cached_units([4, 5]) == 2
    kv.allocate(2)  # evicts 2 then 1
    assert [cached(kv, k) for k in (1, 2, 3, 4, 5)] == [False, False, False, True, True]
    kv.allocate(1)  # evicts 5 (freed before 4)
    assert [cached(kv, k) for k in (4, 5)] == [True, False]
    assert kv.num_evicted_units == 4
    assert state(kv) == (5, 0, 1, 1)
    kv.check()


def test_an_acquired_unit_is_not_evicted_and_returns_to_the_back_of_the_lru_order():
    kv = KvBlockPool(4, 16, prefix_caching=True)
    cache_units(kv, [1, 2, 3, 4])
    kv.release_units([1, 2, 3, 4])  # given order decides: 1 goes first
    kv.acquire([1])
    kv.release_units([1])  # freed again: now the most recent
    kv.acquire([2])  # held: cannot be evicted
    kv.allocate(2)  # evicts 3 then 4
    assert [cached(kv, k) for k in (1, 2, 3, 4)] == [True, True, False, False]
    with pytest.raises(RuntimeError):
        kv.allocate(2)  # only unit 1 is evictable
    kv.allocate(1)
    assert [cached(kv, k) for k in (1, 2)] == [False, True]
    assert state(kv) == (4, 0, 0, 0)
    kv.check()


def test_evicted_key_can_be_inserted_again():
    kv = KvBlockPool(2, 16, prefix_caching=True)
    cache_units(kv, [1, 2])
    kv.release_units([2, 1])
    kv.allocate(2)
    assert kv.cached_units([1]) == 0 and kv.evictable_blocks == 0
    assert kv.insert(1, 1) is True
    kv.check()


# ----------------------------------------------------------------------------------------------- stateful model

KEYS = range(8)


def unit_blocks(key: int) -> int:
    return key % 3 + 1  # units of 1..3 blocks


class PoolMachine(RuleBasedStateMachine):
    """Random operations by "requests", each holding private blocks and units, against a model of the pool: the
    cached units, their references and the LRU order of the unreferenced ones."""

    requests = Bundle("requests")

    @initialize(capacity=st.integers(1, 30))
    def setup(self, capacity):
        self.kv = KvBlockPool(capacity, 16, prefix_caching=True)
        self.capacity = capacity
        self.private: dict[int, int] = {}  # request -> private blocks
        self.held: dict[int, list[int]] = {}  # request -> units held, in acquisition order
        self.refs: dict[int, int] = {}  # cached key -> references
        self.lru: list[int] = []  # unreferenced cached keys, least recently freed first
        self.next_id = 0
        self.evicted = 0

    # -- model helpers

    def _evict_for(self, n: int) -> None:
        free = self.capacity - self._used() - self._evictable()
        while n > free:
            key = self.lru.pop(0)
            del self.refs[key]
            self.evicted += 1
            free += unit_blocks(key)

    def _used(self) -> int:
        return sum(self.private.values()) + sum(unit_blocks(k) for k, r in self.refs.items() if r > 0)

    def _evictable(self) -> int:
        return sum(unit_blocks(k) for k in self.lru)

    # -- rules

    @rule(target=requests, n=st.integers(0, 12))
    def new_request(self, n):
        rid = self.next_id
        self.next_id += 1
        self.private[rid] = 0
        self.held[rid] = []
        if n <= self.kv.available_blocks:
            self._evict_for(n)
            self.kv.allocate(n)
            self.private[rid] = n
        return rid

    @rule(rid=requests, n=st.integers(0, 12))
    def allocate(self, rid, n):
        if rid not in self.private:
            return
        if n > self.kv.available_blocks:
            before = state(self.kv)
            with pytest.raises(RuntimeError):
                self.kv.allocate(n)
            assert state(self.kv) == before
            return
        self._evict_for(n)
        self.kv.allocate(n)
        self.private[rid] += n

    @rule(rid=requests, key=st.sampled_from(KEYS))
    def insert(self, rid, key):
        if rid not in self.private or self.private[rid] < unit_blocks(key) or key in self.held[rid]:
            return
        ok = self.kv.insert(key, unit_blocks(key))
        assert ok == (key not in self.refs)
        if ok:
            self.refs[key] = 1
            self.private[rid] -= unit_blocks(key)
            self.held[rid].append(key)

    @rule(rid=requests, keys=st.lists(st.sampled_from(KEYS), max_size=4, unique=True))
    def acquire(self, rid, keys):
        if rid not in self.private:
            return
        assert self.kv.cached_units(keys) == next((i for i, k in enumerate(keys) if k not in self.refs), len(keys))
        keys = [k for k in keys if k in self.refs and k not in self.held[rid]]
        assert self.kv.unheld_blocks(keys) == sum(unit_blocks(k) for k in keys if self.refs[k] == 0)
        assert self.kv.acquire(keys) == sum(unit_blocks(k) for k in keys)
        for k in keys:
            if self.refs[k] == 0:
                self.lru.remove(k)
            self.refs[k] += 1
            self.held[rid].append(k)

    @rule(rid=consumes(requests))
    def finish(self, rid):
        if rid not in self.private:
            return
        self.kv.release(self.private.pop(rid))
        units = self.held.pop(rid)[::-1]
        self.kv.release_units(units)
        for k in units:
            self.refs[k] -= 1
            if self.refs[k] == 0:
                self.lru.append(k)

    @precondition(lambda self: self.private)
    @rule(data=st.data())
    def release_some_private(self, data):
        rid = data.draw(st.sampled_from(sorted(self.private)))
        n = data.draw(st.integers(0, self.private[rid]))
        self.kv.release(n)
        self.private[rid] -= n

    # -- invariants, after every operation

    @invariant()
    def conserved(self):
        kv = self.kv
        kv.check()
        assert kv.used_blocks >= 0 and kv.free_blocks >= 0 and kv.evictable_blocks >= 0
        assert kv.used_blocks + kv.free_blocks + kv.evictable_blocks == self.capacity
        assert kv.available_blocks == kv.free_blocks + kv.evictable_blocks
        assert kv.used_blocks == self._used()
        assert kv.evictable_blocks == self._evictable()
        assert kv.held_unit_blocks() == sum(unit_blocks(k) for k, r in self.refs.items() if r > 0)
        assert kv.num_evicted_units == self.evicted
        for k in KEYS:
            assert cached(kv, k) == (k in self.refs)
        assert all(r >= 0 for r in self.refs.values())


PoolMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                         suppress_health_check=[HealthCheck.too_slow])
TestPoolMachine = PoolMachine.TestCase
