"""Merge the detections of overlapping windows into scene instances: one object, one instance.

Windows overlap, so an object near a window edge is seen by several windows, whole by some and cut by
others; an object larger than the overlap is cut by every window. Two rules make each object one
instance with one mask:

**Matching** (which detections are the same object). Two detections of one class from two windows
``V`` and ``W`` are compared where both windows see the scene, the shared region ``S = V ∩ W``:
``IoU_S = |a ∩ b| / |(a ∪ b) ∩ S|``. Both windows see the same pixels in ``S``, so two views of one
object agree there even when one of them is cut at its window's edge, and two different objects that
merely touch do not. For each pair of windows, detections are paired one to one, greedily by
decreasing ``IoU_S``, when ``IoU_S >= iou`` (0.5 by default); pairs across all windows are joined
transitively (union-find), so an object spanning four windows becomes one group.

**Composing** (the group's mask). Every scene pixel is *owned* by the window whose centre is nearest
along each axis (the window boundaries are the midpoints between consecutive window centres, which
lie in the overlaps), the same partition as cutting each window's margins at half the overlap. A
pixel belongs to the instance when the member detection of its owning window has it: the most central
view decides, also where it sees nothing (a view from a window's margin, where a network sees least
context, never adds pixels the central view left out; a group with no pixel in its members' own regions
is dropped). An object inside one window's owned region is exactly that window's detection; an object
cut by seams is stitched from the views that see each part most centrally, without gaps or doubled
edges. The instance's score is its members' highest, and its class that member's.

Memory: detections are merged as the windows arrive, row of windows by row of windows; a group is
finished (composed and handed on) as soon as no later window can reach any of its members.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ..tiling import Box, WindowGrid
from .windows import Detection, Index, Instance

__all__ = ["Instance", "Merger", "owner_bounds", "shared_iou"]

DEFAULT_IOU = 0.5


def owner_bounds(starts: np.ndarray, tile: int, size: int) -> np.ndarray:
    """Along one axis: window ``i`` owns ``[bounds[i], bounds[i + 1])``; the inner bounds are the midpoints
    (rounded down) between consecutive window centres ``start + tile / 2``."""
    s = np.asarray(starts, dtype=np.int64)
    inner = (s[:-1] + s[1:] + tile) // 2
    return np.concatenate([[0], inner, [size]]).astype(np.int64)


def _owners(bounds: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """The owning window (along one axis) of each coordinate ``lo .. hi - 1``."""
    return np.searchsorted(bounds, np.arange(lo, hi), side="right") - 1


def _window_box(grid: WindowGrid, index: Index) -> Box:
    start = tuple(int(grid.starts[a][i]) for a, i in enumerate(index))
    return Box(start, tuple(s + t for s, t in zip(start, grid.tile, strict=True)))


def _count_in(det: Detection, region: Box) -> int:
    part = det.box.intersect(region)
    return 0 if part is None else int(np.count_nonzero(det.mask[part.relative_to(det.box)]))


def shared_iou(a: Detection, b: Detection, shared: Box) -> float:
    """``|a ∩ b| / |(a ∪ b) ∩ shared|`` (0 when neither has a pixel in ``shared``)."""
    both = a.box.intersect(b.box)
    inter = 0 if both is None else int(np.count_nonzero(a.mask[both.relative_to(a.box)]
                                                         & b.mask[both.relative_to(b.box)]))
    union = _count_in(a, shared) + _count_in(b, shared) - inter
    return inter / union if union > 0 else 0.0


class _Groups:
    """Union-find over detection numbers."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def add(self, k: int) -> None:
        self.parent[k] = k

    def root(self, k: int) -> int:
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def join(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


class Merger:
    """Feed it each window's detections in grid order (:meth:`add`), and :meth:`end_row` after each row of
    windows; it yields the finished instances (then :meth:`finish` the rest)."""

    def __init__(self, grid: WindowGrid, iou: float = DEFAULT_IOU) -> None:
        if grid.ndim != 2:
            raise ValueError("instance merging is 2D")
        self.grid = grid
        self.iou = iou
        self.bounds = [owner_bounds(grid.starts[a], grid.tile[a], grid.shape[a]) for a in range(2)]
        self.detections: dict[int, Detection] = {}
        self.by_window: dict[Index, list[int]] = {}
        self.groups = _Groups()
        self.count = 0

    def add(self, window: Index, detections: Iterable[Detection]) -> None:
        """The detections of ``window`` (scene coordinates), matched against the pending windows it overlaps."""
        window = tuple(window)
        numbers = []
        for det in detections:
            self.count += 1
            self.detections[self.count] = det
            self.groups.add(self.count)
            numbers.append(self.count)
        here = _window_box(self.grid, window)
        for other, theirs in self.by_window.items():
            shared = _window_box(self.grid, other).intersect(here)
            if shared is not None and theirs and numbers:
                self._match(theirs, numbers, shared)
        self.by_window.setdefault(window, []).extend(numbers)

    def _match(self, theirs: list[int], ours: list[int], shared: Box) -> None:
        candidates = []
        for a in theirs:
            da = self.detections[a]
            for b in ours:
                db = self.detections[b]
                if da.label != db.label or da.box.intersect(db.box) is None:
                    continue
                value = shared_iou(da, db, shared)
                if value >= self.iou:
                    candidates.append((-value, a, b))
        used: set[int] = set()
        for _, a, b in sorted(candidates):
            if a not in used and b not in used:
                used.update((a, b))
                self.groups.join(a, b)

    def end_row(self, next_row_start: int | None) -> Iterator[Instance]:
        """After a row of windows: the instances no later window can reach (every member's box ends at or
        above ``next_row_start``, the first scene row of the next row of windows; None: the last row)."""
        limit = None if next_row_start is None else int(next_row_start)
        members: dict[int, list[int]] = {}
        for k in self.detections:
            members.setdefault(self.groups.root(k), []).append(k)
        for root in sorted(members):
            numbers = members[root]
            if limit is not None and any(self.detections[k].box.stop[0] > limit for k in numbers):
                continue
            instance = self._compose([self.detections[k] for k in numbers])
            for k in numbers:
                det = self.detections.pop(k)
                self.by_window[det.window].remove(k)
            if instance is not None:
                yield instance
        self.by_window = {w: ks for w, ks in self.by_window.items() if ks}
        for k in self.detections:  # flatten the links of those still pending
            self.groups.parent[k] = self.groups.root(k)
        self.groups.parent = {k: v for k, v in self.groups.parent.items() if k in self.detections}

    def finish(self) -> Iterator[Instance]:
        """Every instance still pending (after the last row)."""
        yield from self.end_row(None)

    def _compose(self, members: list[Detection]) -> Instance | None:
        box = members[0].box
        for det in members[1:]:
            box = box.union(det.box)
        rows = _owners(self.bounds[0], box.start[0], box.stop[0])
        cols = _owners(self.bounds[1], box.start[1], box.stop[1])
        out = np.zeros(box.shape, dtype=bool)
        for det in members:
            own = (rows[det.box.relative_to(box)[0]] == det.window[0])[:, None] \
                & (cols[det.box.relative_to(box)[1]] == det.window[1])[None, :]
            out[det.box.relative_to(box)] |= det.mask & own
        best = max(members, key=lambda d: d.score)
        r = np.flatnonzero(out.any(axis=1))
        if not len(r):
            return None
        c = np.flatnonzero(out.any(axis=0))
        r0, r1, c0, c1 = int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1
        return Instance((box.start[0] + r0, box.start[1] + c0), np.ascontiguousarray(out[r0:r1, c0:c1]),
                        best.label, best.score)
