"""The store of materialised struct-page frames: frame pfn -> what the frame holds.

A mapping like a dict, in two tiers. Plain copies (``CopyOf(first_pfn)`` with nothing rewritten:
HVO's new head pages, device-dax's shared first tail pages) come hundreds of thousands at a time
and are kept as sorted numpy arrays of frames and first pfns, in blocks merged as they grow (each
about twice the next, so a lookup searches a few and an entry is merged a few times); every other
descriptor, and whatever is described one frame at a time, sits in a dict. A frame lives in one
tier at most. At 1 TiB of 2 MiB HugeTLB pages with HVO this holds 524,288 new head pages in 16
bytes each instead of about 170 (a dict entry, two ints and a tuple).
"""

from typing import NamedTuple

import numpy as np


class CopyOf(NamedTuple):
    """A frame holding a copy of the struct pages of ``first_pfn``'s vmemmap page, with the
    struct pages in ``overrides`` (index -> StructPage) rewritten. (Named tuples: HVO makes one
    per folio, hundreds of thousands at a time.)"""

    first_pfn: int
    overrides: tuple = ()


class SharedTail(NamedTuple):
    """7.1's per-zone read-only page of identical tail struct pages of one folio order."""

    order: int


def lookup(ordered, values):
    """Where each of the array ``values`` sits in the sorted array ``ordered`` (``searchsorted``:
    its index if there, else where it would go), and which of them are there."""
    at = np.searchsorted(ordered, values)
    if not len(ordered):
        return at, np.zeros(len(values), dtype=bool)
    return at, ordered[np.minimum(at, len(ordered) - 1)] == values


class _Block:
    """Sorted frames, the first pfn each copies, and which are still held."""

    __slots__ = ("frames", "firsts", "held", "count")

    def __init__(self, frames, firsts):
        self.frames, self.firsts = frames, firsts
        self.held = np.ones(len(frames), dtype=bool)
        self.count = len(frames)

    def find(self, frames):
        """Where each of ``frames`` (an array) is here (see :func:`lookup`), and which are held here."""
        at, hit = lookup(self.frames, frames)
        hit[hit] = self.held[at[hit]]
        return at, hit

    def index(self, frame):
        """Where the single ``frame`` (None: no frame) is held here, or -1."""
        if frame is None or not self.frames[0] <= frame <= self.frames[-1]:
            return -1
        i = int(self.frames.searchsorted(frame))
        return i if self.frames[i] == frame and self.held[i] else -1


class Descriptors:
    """frame -> descriptor (:class:`CopyOf` or ``SharedTail``), with plain copies in arrays."""

    def __init__(self):
        self._dict = {}
        self._blocks = []  # largest first

    # -- the mapping ----------------------------------------------------------------------------
    def __len__(self):
        return len(self._dict) + sum(block.count for block in self._blocks)

    def __bool__(self):
        return bool(self._dict) or bool(self._blocks)

    def __contains__(self, frame):
        return frame in self._dict or any(block.index(frame) >= 0 for block in self._blocks)

    def get(self, frame, default=None):
        found = self._dict.get(frame)
        if found is not None:
            return found
        for block in self._blocks:
            i = block.index(frame)
            if i >= 0:
                return CopyOf(int(block.firsts[i]))
        return default

    def __getitem__(self, frame):
        found = self.get(frame)
        if found is None:
            raise KeyError(frame)
        return found

    def __setitem__(self, frame, descriptor):
        self._drop_from_blocks(frame)
        self._dict[frame] = descriptor

    def pop(self, frame, default=None):
        """Hold nothing for ``frame``; returns what was held."""
        found = self._dict.pop(frame, None)
        if found is not None:
            return found
        for block in self._blocks:
            i = block.index(frame)
            if i >= 0:
                self._unhold(block, np.array([i]))
                return CopyOf(int(block.firsts[i]))
        return default

    def frames(self):
        """Every frame held, as an unsorted int64 array."""
        parts = [np.fromiter(self._dict, dtype=np.int64, count=len(self._dict))]
        parts += [block.frames[block.held] for block in self._blocks]
        return np.concatenate(parts)

    def __iter__(self):
        return iter(self.frames().tolist())

    def items(self):
        """(frame, descriptor) of every frame held (plain copies made as :class:`CopyOf`)."""
        out = list(self._dict.items())
        for block in self._blocks:
            out += [(frame, CopyOf(first)) for frame, first in
                    zip(block.frames[block.held].tolist(), block.firsts[block.held].tolist())]
        return out

    # -- many at once ---------------------------------------------------------------------------
    def get_many(self, frames) -> list:
        """``get`` of each of ``frames`` (an int64 array), as a list (None where nothing is held)."""
        out = [None] * len(frames)
        if self._dict:
            get = self._dict.get
            out = [get(frame) for frame in frames.tolist()]
        for block in self._blocks:
            at, hit = block.find(frames)
            for k, first in zip(np.flatnonzero(hit).tolist(), block.firsts[at[hit]].tolist()):
                out[k] = CopyOf(first)
        return out

    def holds(self, frames):
        """Which of ``frames`` (an int64 array) something is held for, as a boolean array."""
        if self._dict:
            held = self._dict.__contains__
            mask = np.fromiter(map(held, frames.tolist()), dtype=bool, count=len(frames))
        else:
            mask = np.zeros(len(frames), dtype=bool)
        for block in self._blocks:
            mask |= block.find(frames)[1]
        return mask

    def plain_firsts(self, frames):
        """For each of ``frames`` (an int64 array) held as a plain copy in the array tier, the first
        pfn it copies; -1 for the others (held in the dict, or not at all)."""
        out = np.full(len(frames), -1, dtype=np.int64)
        for block in self._blocks:
            at, hit = block.find(frames)
            out[hit] = block.firsts[at[hit]]
        return out

    def put(self, frames, descriptors):
        """Hold each descriptor of ``descriptors`` that is not None for the frame at the same place
        in ``frames`` (an int64 array of frames holding nothing), in the dict."""
        self._dict.update((frame, d) for frame, d in zip(frames.tolist(), descriptors) if d is not None)

    def add_plain(self, frames, firsts):
        """Hold each of ``frames`` (an int64 array of distinct frames holding nothing) as
        ``CopyOf(first)`` of the pfn at the same place in ``firsts``."""
        if not len(frames):
            return
        order = np.argsort(frames, kind="stable")
        self._blocks.append(_Block(frames[order], np.asarray(firsts, dtype=np.int64)[order]))
        while len(self._blocks) > 1 and self._blocks[-2].count <= 2 * self._blocks[-1].count:
            last = self._blocks.pop()
            self._blocks[-1] = _merge(self._blocks[-1], last)

    def take_many(self, frames, ordered=False):
        """Hold nothing for any of ``frames`` (an int64 array of distinct frames, ascending if
        ``ordered``); returns what was held, for :meth:`put_back`."""
        taken = {}
        if self._dict:
            if len(frames) < len(self._dict):
                pop = self._dict.pop
                for frame in frames.tolist():
                    found = pop(frame, None)
                    if found is not None:
                        taken[frame] = found
            else:
                keys = np.fromiter(self._dict, dtype=np.int64, count=len(self._dict))
                for frame in keys[_members(keys, frames, ordered)].tolist():
                    taken[frame] = self._dict.pop(frame)
        plain = []
        for block in list(self._blocks):
            if ordered and len(frames) > len(block.frames):  # look the block's frames up in the frames
                index = np.flatnonzero(_members(block.frames, frames, True) & block.held)
            else:
                at, hit = block.find(frames)
                index = at[hit]
            if len(index):
                plain.append((block.frames[index], block.firsts[index]))
                self._unhold(block, index)
        return taken, plain

    def put_back(self, taken):
        """Hold again what :meth:`take_many` took (its frames holding nothing now)."""
        entries, plain = taken
        self._dict.update(entries)
        if plain:
            self.add_plain(np.concatenate([f for f, _ in plain]), np.concatenate([p for _, p in plain]))

    # -- inside ---------------------------------------------------------------------------------
    def _drop_from_blocks(self, frame):
        for block in self._blocks:
            i = block.index(frame)
            if i >= 0:
                self._unhold(block, np.array([i]))
                return

    def _unhold(self, block, index):
        """``index``: distinct places in ``block`` that are held."""
        block.held[index] = False
        block.count -= len(index)
        if not block.count:
            self._blocks.remove(block)


def _merge(a, b):
    """One block holding what ``a`` and ``b`` hold (their frames distinct)."""
    frames = np.concatenate((a.frames[a.held], b.frames[b.held]))
    firsts = np.concatenate((a.firsts[a.held], b.firsts[b.held]))
    order = np.argsort(frames, kind="stable")  # two sorted runs: a merge
    return _Block(frames[order], firsts[order])


def _members(keys, frames, ordered):
    """Which of ``keys`` are among ``frames`` (arrays; ``frames`` ascending if ``ordered``: then
    without a temporary the size of both)."""
    return lookup(frames, keys)[1] if ordered else np.isin(keys, frames)
