"""The plan of a run: which chunk evaluates which windows, what it reads, what each merge needs.

Pure data, computed before anything runs. Every window belongs to the chunk holding its start
corner (its *owner*); the owner's evaluation task runs it once, and hands each chunk the window
touches the part of ``w · p`` that lies inside that chunk. A chunk's merge task sums the parts
it receives in global window order, so its pixels do not depend on the chunking, the scheduler
or which chunks an earlier, interrupted run already finished.

Chunks listed as ``done`` (finished by an earlier run) are not merged again; only the windows
that touch an unfinished chunk are evaluated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from ..tiling import Box, ChunkGrid, WindowGrid

__all__ = ["ChunkTask", "Index", "Plan", "make_plan", "merge_axes"]

Index = tuple[int, ...]


@dataclass(frozen=True)
class ChunkTask:
    """What one chunk does in a run.

    ``evaluates``: windows this chunk's evaluation task runs, in grid order (those starting in
    the chunk that some unfinished chunk needs). ``read``: the region that task reads (its
    windows and, when the chunk is merged, the chunk itself for its validity mask); None when
    the chunk has no evaluation task. ``merge``: whether the chunk is computed in this run.
    ``sources``: the chunks whose evaluation tasks hand parts to this chunk's merge, in raster
    order (itself included). ``targets``: the chunks this evaluation hands parts to.
    """

    index: Index
    box: Box
    evaluates: tuple[Index, ...]
    read: Box | None
    merge: bool
    sources: tuple[Index, ...]
    targets: tuple[Index, ...]

    @property
    def has_evaluation(self) -> bool:
        return self.read is not None


@dataclass(frozen=True)
class Plan:
    """The whole run: the grids and one :class:`ChunkTask` per chunk, in raster order."""

    grid: WindowGrid
    chunks: ChunkGrid
    tasks: tuple[ChunkTask, ...]

    @cached_property
    def by_index(self) -> dict[Index, ChunkTask]:
        return {t.index: t for t in self.tasks}

    @property
    def merged(self) -> list[ChunkTask]:
        return [t for t in self.tasks if t.merge]

    @property
    def evaluations(self) -> list[ChunkTask]:
        return [t for t in self.tasks if t.has_evaluation]

    @property
    def windows_to_evaluate(self) -> int:
        return sum(len(t.evaluates) for t in self.tasks)


def merge_axes(counts: Sequence[int]) -> list[int]:
    """The chunk axes from slowest to fastest in the order chunks are merged: most chunks first."""
    return sorted(range(len(counts)), key=lambda a: (-counts[a], a))


def owner_of(grid: WindowGrid, chunks: ChunkGrid, window: Index) -> Index:
    start = grid.window(window).start
    return tuple(s // c for s, c in zip(start, chunks.chunk, strict=True))


def make_plan(grid: WindowGrid, chunks: ChunkGrid, done: Iterable[Index] = ()) -> Plan:
    """Plan a run over ``chunks``, skipping the chunks in ``done``.

    Raises nothing for a ``done`` index outside the chunk grid: it is ignored (a completion
    record from another layout never marks a chunk of this one).
    """
    if grid.shape != chunks.shape:
        raise ValueError(f"window grid shape {grid.shape} differs from chunk grid shape {chunks.shape}")
    finished = set(done)
    boxes = dict(iter(chunks))
    todo = [index for index in boxes if index not in finished]
    needed: set[Index] = set()
    sources: dict[Index, set[Index]] = {}
    for index in todo:
        touching = grid.indices_touching(boxes[index])
        needed.update(touching)
        sources[index] = {owner_of(grid, chunks, w) for w in touching} | {index}
    owned: dict[Index, list[Index]] = {}
    for window in sorted(needed):
        owned.setdefault(owner_of(grid, chunks, window), []).append(window)
    targets: dict[Index, set[Index]] = {}
    for target, owners in sources.items():
        for owner in owners:
            targets.setdefault(owner, set()).add(target)
    tasks = []
    for index, box in boxes.items():
        evaluates = tuple(owned.get(index, ()))
        merge = index in sources
        read: Box | None = box if merge else None
        for window in evaluates:
            wbox = grid.window(window)
            read = wbox if read is None else read.union(wbox)
        tasks.append(ChunkTask(index=index, box=box, evaluates=evaluates, read=read, merge=merge,
                               sources=tuple(sorted(sources.get(index, ()))),
                               targets=tuple(sorted(targets.get(index, ())))))
    return Plan(grid=grid, chunks=chunks, tasks=tuple(tasks))
