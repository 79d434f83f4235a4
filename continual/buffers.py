"""Bounded memories of past examples for replay and gradient-episodic methods.

Items are ``(task_id, example)`` pairs so that a replayed example keeps its task (and with it its head).
"""
from __future__ import annotations

import random
from typing import Any, Callable, Hashable


class ReservoirBuffer:
    """A uniform sample of everything ever added, at most ``capacity`` items (Vitter 1985, algorithm R):
    the n-th item enters with probability capacity / n, replacing a uniformly chosen resident."""

    def __init__(self, capacity: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.items: list = []
        self.seen = 0
        self.rng = random.Random(seed)

    def add(self, item: Any) -> None:
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(item)
        else:
            j = self.rng.randrange(self.seen)
            if j < self.capacity:
                self.items[j] = item

    def sample(self, n: int) -> list:
        return self.rng.sample(self.items, min(n, len(self.items)))

    def __len__(self) -> int:
        return len(self.items)


class BalancedBuffer:
    """Equal room per key (class-balanced replay with ``key`` = the label; GEM's per-task memory with
    ``key`` = the task): ``capacity // #keys`` items per key, each key's share a reservoir sample of its items.
    When a new key arrives, every share is cut down at random to the new quota."""

    def __init__(self, capacity: int, key: Callable[[Any], Hashable], seed: int = 0):
        if capacity < 1:
            raise ValueError(f"buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.key = key
        self.rng = random.Random(seed)
        self.shares: dict[Hashable, list] = {}
        self.seen: dict[Hashable, int] = {}

    def quota(self) -> int:
        return max(1, self.capacity // max(1, len(self.shares)))

    def add(self, item: Any) -> None:
        k = self.key(item)
        if k not in self.shares:
            self.shares[k], self.seen[k] = [], 0
            q = self.quota()
            for key, share in self.shares.items():
                if len(share) > q:
                    self.shares[key] = self.rng.sample(share, q)
        self.seen[k] += 1
        share, q = self.shares[k], self.quota()
        if len(share) < q:
            share.append(item)
        else:
            j = self.rng.randrange(self.seen[k])
            if j < q:
                share[j] = item

    @property
    def items(self) -> list:
        return [it for share in self.shares.values() for it in share]

    def sample(self, n: int) -> list:
        items = self.items
        return self.rng.sample(items, min(n, len(items)))

    def __len__(self) -> int:
        return sum(len(s) for s in self.shares.values())
