"""Property tests of the engine's plan: every needed window evaluated exactly once, every merge fed completely."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segflow.engine.plan import Index, Plan, make_plan, merge_axes, owner_of
from segflow.tiling import ChunkGrid, WindowGrid


def _plans(ndim: int, max_side: int) -> st.SearchStrategy[tuple[WindowGrid, ChunkGrid, frozenset[Index]]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[WindowGrid, ChunkGrid, frozenset[Index]]:
        shape = tuple(draw(st.integers(1, max_side)) for _ in range(ndim))
        grid = WindowGrid.create(shape, draw(st.integers(1, max_side // 2 + 2)), draw(st.floats(0.0, 0.9)))
        chunks = ChunkGrid.create(shape, tuple(draw(st.integers(1, max_side)) for _ in range(ndim)))
        indices = list(itertools.product(*(range(n) for n in chunks.counts)))
        done = draw(st.sets(st.sampled_from(indices))) if indices else set()
        return grid, chunks, frozenset(done)
    return build()


def _check(plan: Plan, done: frozenset[Index]) -> None:
    grid, chunks = plan.grid, plan.chunks
    todo = [t for t in plan.tasks if t.index not in done]
    assert [t.index for t in plan.merged] == [t.index for t in todo], "exactly the unfinished chunks are merged"
    needed = {w for t in todo for w in grid.indices_touching(t.box)}
    evaluated = [w for t in plan.tasks for w in t.evaluates]
    assert len(evaluated) == len(set(evaluated)), "no window is evaluated twice"
    assert set(evaluated) == needed, "exactly the windows some unfinished chunk needs are evaluated"
    assert plan.windows_to_evaluate == len(needed)
    for task in plan.tasks:
        assert list(task.evaluates) == sorted(task.evaluates), "windows run in grid order"
        for w in task.evaluates:
            assert owner_of(grid, chunks, w) == task.index, "a window is run by the chunk holding its start"
            assert task.read is not None and grid.window(w).intersect(task.read) == grid.window(w), "window is read"
        if task.merge:
            assert task.read is not None and task.box.intersect(task.read) == task.box, "the chunk itself is read"
            assert task.index in task.sources and task.index in task.targets
            fed = {w for s in task.sources for w in plan.by_index[s].evaluates
                   if grid.window(w).intersect(task.box) is not None}
            assert fed == set(grid.indices_touching(task.box)), "the sources hold every window touching the chunk"
            for s in task.sources:
                assert task.index in plan.by_index[s].targets, "every source hands this chunk a part"
        else:
            assert not task.sources
        for target in task.targets:
            assert plan.by_index[target].merge and task.index in plan.by_index[target].sources
        if not task.merge and not task.evaluates:
            assert task.read is None and not task.targets


@given(_plans(2, 120))
def test_plan_2d(case: tuple[WindowGrid, ChunkGrid, frozenset[Index]]) -> None:
    grid, chunks, done = case
    _check(make_plan(grid, chunks, done), done)


@given(_plans(3, 40))
def test_plan_3d(case: tuple[WindowGrid, ChunkGrid, frozenset[Index]]) -> None:
    grid, chunks, done = case
    _check(make_plan(grid, chunks, done), done)


@given(_plans(2, 80))
def test_a_fresh_plan_evaluates_every_window_once(case: tuple[WindowGrid, ChunkGrid, frozenset[Index]]) -> None:
    grid, chunks, _ = case
    plan = make_plan(grid, chunks)
    evaluated = sorted(w for t in plan.tasks for w in t.evaluates)
    assert evaluated == sorted(itertools.product(*(range(n) for n in grid.counts)))
    assert all(t.merge for t in plan.tasks)


def test_a_finished_run_plans_nothing_and_unknown_records_are_ignored() -> None:
    grid = WindowGrid.create((100, 90), 32, 0.25)
    chunks = ChunkGrid.create((100, 90), 40)
    every = [i for i, _ in chunks]
    plan = make_plan(grid, chunks, [*every, (99, 99)])
    assert not plan.merged and not plan.evaluations and plan.windows_to_evaluate == 0


def test_one_unfinished_chunk_evaluates_only_the_windows_it_needs() -> None:
    grid = WindowGrid.create((256, 256), 32, 0.5)
    chunks = ChunkGrid.create((256, 256), 64)
    done = [i for i, _ in chunks if i != (2, 2)]
    plan = make_plan(grid, chunks, done)
    assert [t.index for t in plan.merged] == [(2, 2)]
    assert plan.windows_to_evaluate == len(grid.indices_touching(chunks.box((2, 2))))
    assert {t.index for t in plan.evaluations} == {(1, 1), (1, 2), (2, 1), (2, 2)}


def test_merge_axes_put_the_axis_with_most_chunks_first_and_break_ties_by_axis() -> None:
    assert merge_axes((4, 4, 7)) == [2, 0, 1]
    assert merge_axes((2, 32)) == [1, 0]
    assert merge_axes((3, 3)) == [0, 1]
    assert merge_axes((1, 5, 5)) == [1, 2, 0]


def test_grids_of_different_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"window grid shape \(10, 10\) differs from chunk grid shape \(10, 11\)"):
        make_plan(WindowGrid.create((10, 10), 4, 0.25), ChunkGrid.create((10, 11), 5))
