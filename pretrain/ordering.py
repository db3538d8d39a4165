"""Seeded orders of one epoch's sequences, computed position by position.

The one-epoch loader needs an order of the N sequences that every rank agrees on. Materialising
a permutation costs 8 bytes per sequence on every rank (12 GB at 3T tokens of 2048); a keyed
bijection of [0, N) costs nothing up front: the sequence at position p is computed when p is
reached, so start-up and memory do not depend on N.

``feistel`` (the default) is a balanced-as-possible Feistel network over the smallest power of
two >= N, with a splitmix64 round function, restricted to [0, N) by cycle-walking (positions
that land outside [0, N) are permuted again until they land inside: still a bijection, about
two rounds of walking at worst on average). ``permutation`` is numpy's
``default_rng(seed).permutation(N)``, the loader's order before orders were recorded; it is
O(N) per rank and kept only so that runs started with it can be finished.

An order's ``spec`` is saved with the loader state; the exact definition of a (name, version)
never changes, so a checkpoint resumes in the same order on any machine, any world size.
"""
from __future__ import annotations

import numpy as np

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def _splitmix64(state: int) -> int:
    """The splitmix64 output for ``state`` (Python ints: the round keys)."""
    z = (state + _GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


_U30, _U27, _U31, _UM1, _UM2 = (np.uint64(v) for v in (30, 27, 31, _M1, _M2))


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (multiplication wraps modulo 2**64)."""
    x = (x ^ (x >> _U30)) * _UM1
    x = (x ^ (x >> _U27)) * _UM2
    return x ^ (x >> _U31)


class FeistelOrder:
    """Position -> sequence index: a keyed bijection of [0, n), O(1) memory."""

    name, version, rounds = "feistel", 1, 8
    spec = {"name": name, "version": version, "rounds": rounds}

    def __init__(self, n: int, seed: int):
        if n < 0:
            raise ValueError(f"an order needs n >= 0, got {n}")
        self.n = n
        bits = max(2, (n - 1).bit_length())  # 2**bits >= n; two halves of at least one bit
        hi, lo = bits - bits // 2, bits // 2
        self._lo_shift, self._n = np.uint64(lo), np.uint64(n)
        self._masks = [np.uint64((1 << w) - 1) for w in (hi, lo)]  # of the left half before round 0, 1, 0, 1…
        state = seed & _MASK64
        self._keys = []
        for _ in range(self.rounds):
            self._keys.append(np.uint64(_splitmix64(state)))
            state = (state + _GOLDEN) & _MASK64

    def _permute(self, x: np.ndarray) -> np.ndarray:
        """A bijection of [0, 2**bits): each round maps (L, R) to (R, L ^ F(R)), the widths trading places."""
        left, right = x >> self._lo_shift, x & self._masks[1]
        for i, key in enumerate(self._keys):
            left, right = right, left ^ (_mix64(right ^ key) & self._masks[i % 2])
        return (left << self._lo_shift) | right  # an even number of rounds: the widths are back in place

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        pos = np.asarray(positions, dtype=np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= self.n):
            raise IndexError(f"positions must lie in [0, {self.n})")
        out = self._permute(pos.astype(np.uint64))
        outside = out >= self._n
        while outside.any():  # cycle-walking: the cycle through an inside point returns inside
            out[outside] = self._permute(out[outside])
            outside = out >= self._n
        return out.astype(np.int64)


class PermutationOrder:
    """``np.random.default_rng(seed).permutation(n)``: O(n) per rank, for runs started before ``feistel``."""

    name, version = "permutation", 0
    spec = {"name": name, "version": version}

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perm: np.ndarray | None = None

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        if self._perm is None:
            self._perm = np.random.default_rng(self.seed).permutation(self.n)
        return self._perm[np.asarray(positions, dtype=np.int64)]


ORDERS = {cls.name: cls for cls in (FeistelOrder, PermutationOrder)}
# Loader states saved before the order was recorded were all ordered by numpy's permutation.
UNRECORDED_ORDER = PermutationOrder.spec


def make_order(name: str, n: int, seed: int) -> FeistelOrder | PermutationOrder:
    if name not in ORDERS:
        raise ValueError(f"unknown order {name!r} (known: {', '.join(ORDERS)})")
    return ORDERS[name](n, seed)


def describe(spec: dict) -> str:
    """``feistel/1 (rounds=8)``: how messages name an order."""
    extra = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("name", "version"))
    return f"{spec.get('name')}/{spec.get('version')}" + (f" ({extra})" if extra else "")
