"""read -> compute -> write at once (engine/stages.py): order, bounded queues, failures."""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest

from sparseinst_cli.engine.stages import run_stages


def _jitter(rng: random.Random) -> None:
    time.sleep(rng.uniform(0, 0.002))


def test_every_item_is_written_once_in_order_on_its_own_threads():
    rng = random.Random(0)
    caller = threading.get_ident()
    computed_on, written_on, written = set(), set(), []

    def compute(x: int) -> int:
        computed_on.add(threading.get_ident())
        _jitter(rng)
        return x * x

    def write(y: int) -> None:
        written_on.add(threading.get_ident())
        _jitter(rng)
        written.append(y)

    before = threading.active_count()
    run_stages(range(200), compute, write, depth=3)
    assert written == [x * x for x in range(200)]
    assert computed_on == {caller} and caller not in written_on
    assert threading.active_count() == before  # no thread outlives the call


def test_reading_runs_at_most_a_few_items_ahead_of_writing():
    depth, read, written = 2, [], []

    def source():
        for x in range(100):
            read.append(x)
            yield x

    ahead = []

    def write(x: int) -> None:
        time.sleep(0.001)  # the slowest stage
        written.append(x)
        ahead.append(len(read) - len(written))

    run_stages(source(), lambda x: x, write, depth=depth)
    # two queues of `depth`, one item in each stage: the reader cannot run further ahead
    assert written == list(range(100)) and max(ahead) <= 2 * depth + 3


def test_a_failing_model_step_stops_reading_and_keeps_what_was_done():
    written = []

    def compute(x: int) -> int:
        if x == 7:
            raise RuntimeError("model failed on 7")
        return x

    with pytest.raises(RuntimeError, match="model failed on 7"):
        run_stages(itertools.count(), compute, written.append)  # an endless source stops too
    assert written == list(range(7))


def test_a_failing_writer_stops_everything():
    written = []

    def write(x: int) -> None:
        if x == 5:
            raise OSError("disk full")
        written.append(x)

    with pytest.raises(OSError, match="disk full"):
        run_stages(itertools.count(), lambda x: x, write)
    assert written == list(range(5))


def test_a_failing_reader_raises_after_the_items_it_gave_are_written():
    written = []

    def source():
        yield from range(4)
        raise ValueError("cannot decode item 4")

    with pytest.raises(ValueError, match="cannot decode item 4"):
        run_stages(source(), lambda x: x, written.append)
    assert written == [0, 1, 2, 3]
