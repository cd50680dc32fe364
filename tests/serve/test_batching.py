"""The batching queue on its own: lanes, lone requests on every core, failures, the bounded queue."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from onnxguard.errors import InputError
from onnxguard.runtime.lengths import Cost
from onnxguard.serve.batching import Batcher, Overloaded

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """Two run functions (every core, one lane) that double their input, slowly, and record what ran how."""

    def __init__(self, seconds: float = 0.02, fail: type[BaseException] | None = None,
                 meet: threading.Barrier | None = None) -> None:
        self.seconds, self.fail, self.meet = seconds, fail, meet
        self.calls: list[tuple[str, int]] = []
        self.active: set[str] = set()
        self.overlaps: list[tuple[str, ...]] = []
        self.lock = threading.Lock()

    def _call(self, how: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            token = f"{how}-{len(self.calls)}"
            self.calls.append((how, len(inputs["x"])))
            self.active.add(token)
            self.overlaps.append(tuple(sorted(a.split("-")[0] for a in self.active)))
        try:
            if self.meet is not None and how == "lane":
                self.meet.wait()  # returns once two lane runs are in flight together (broken after its timeout)
            time.sleep(self.seconds)
            if self.fail is not None:
                raise self.fail("the runtime broke")
            return {"y": inputs["x"] * 2}
        finally:
            with self.lock:
                self.active.discard(token)

    def run(self, inputs):
        return self._call("all", inputs)

    def run_lane(self, inputs):
        return self._call("lane", inputs)


def serve(recorder: Recorder, requests: list[np.ndarray], *, lanes: int = 2, stagger: float = 0.0, **kw):
    """Submit each request (after ``stagger`` seconds between them) to a batcher; the answers, in order."""
    async def main():
        b = Batcher(recorder.run, run_lane=recorder.run_lane if lanes > 1 else None, lanes=lanes, **kw)
        b.start()

        async def one(i, x):
            await asyncio.sleep(i * stagger)
            return await b.submit({"x": x}, len(x))

        answers = await asyncio.gather(*(one(i, x) for i, x in enumerate(requests)), return_exceptions=True)
        await b.close()
        return answers
    return asyncio.run(main())


def rows(n: int) -> list[np.ndarray]:
    return [np.full((1, 3), i, np.float32) for i in range(n)]


def test_a_lone_request_runs_at_once_on_every_core():
    rec = Recorder()
    (answer,) = serve(rec, rows(1))
    outputs, batch_id = answer
    assert rec.calls == [("all", 1)]
    np.testing.assert_array_equal(outputs["y"], np.zeros((1, 3)))


def test_under_load_batches_run_side_by_side_on_lanes_and_each_request_gets_its_rows():
    rec = Recorder(seconds=0.01, meet=threading.Barrier(2, timeout=20))
    requests = rows(16)
    answers = serve(rec, requests, lanes=2, max_batch=32)
    assert not [a for a in answers if isinstance(a, BaseException)]
    for x, (outputs, _) in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(outputs["y"], x * 2)
    hows = [how for how, _ in rec.calls]
    assert "lane" in hows
    assert ("lane", "lane") in rec.overlaps  # two batches at once
    assert not any("all" in o and len(o) > 1 for o in rec.overlaps)  # a run on every core never shares them
    assert sum(n for _, n in rec.calls) == 16


def test_requests_queued_behind_a_lone_run_on_every_core_wake_both_lanes_when_it_ends():
    """The lane that ran the lone request wakes the other (asleep, every lane having been taken) for its share."""
    rec = Recorder(seconds=0.3)
    answers = serve(rec, rows(5), lanes=2, stagger=0.01)
    assert not [a for a in answers if isinstance(a, BaseException)]
    assert rec.calls[0] == ("all", 1)
    assert sorted(rec.calls[1:]) == [("lane", 2), ("lane", 2)]
    assert ("lane", "lane") in rec.overlaps


def test_one_lane_runs_one_batch_at_a_time_on_every_core():
    rec = Recorder()
    answers = serve(rec, rows(12), lanes=1)
    assert all(not isinstance(a, BaseException) for a in answers)
    assert {how for how, _ in rec.calls} == {"all"}
    assert all(len(o) == 1 for o in rec.overlaps)


def test_requests_queued_while_the_lanes_run_go_together_in_the_next_batch():
    """Requests arriving one by one while the lanes are busy are taken together (a free lane's share of the queue)
    rather than run one by one."""
    rec = Recorder(seconds=0.03)
    serve(rec, rows(24), lanes=2, max_batch=16, stagger=0.001)
    sizes = [n for how, n in rec.calls if how == "lane"]
    assert sizes and max(sizes) > 1
    assert len(rec.calls) < 24


def test_an_unexpected_failure_answers_every_waiting_request_and_the_queue_goes_on():
    rec = Recorder(fail=RuntimeError)
    answers = serve(rec, rows(6), lanes=2)
    assert all(isinstance(a, RuntimeError) for a in answers)
    rec.fail = None
    answers = serve(rec, rows(3), lanes=2)
    assert all(isinstance(a, tuple) for a in answers)


def test_a_refused_batch_is_rerun_one_request_at_a_time():
    class OneBad(Recorder):
        def _call(self, how, inputs):
            if (inputs["x"] < 0).any():
                raise InputError("negative")
            return super()._call(how, inputs)

    rec = OneBad(seconds=0.01)
    requests = rows(4) + [np.full((1, 3), -1, np.float32)] + rows(3)
    answers = serve(rec, requests, lanes=2)
    assert isinstance(answers[4], InputError)
    assert all(isinstance(a, tuple) for i, a in enumerate(answers) if i != 4)


def test_a_full_queue_refuses_at_once():
    rec = Recorder(seconds=0.05)
    answers = serve(rec, rows(10), lanes=2, max_queue=4)
    refused = [a for a in answers if isinstance(a, Overloaded)]
    assert refused and all(a.retry_after >= 1 for a in refused)
    assert len(refused) < 10


def test_the_next_batch_starts_while_the_event_loop_is_busy():
    """A lane takes its next batch itself: requests queued during a run go into the next one even while the event
    loop is held up (answering, auditing), so the model never waits for the loop between batches."""
    rec = Recorder(seconds=0.02)
    starts: list[float] = []
    run = rec.run

    def timed(inputs):
        starts.append(time.monotonic())
        return run(inputs)

    rec.run = timed  # type: ignore[method-assign]

    async def main():
        b = Batcher(rec.run)
        b.start()
        first = asyncio.ensure_future(b.submit({"x": rows(1)[0]}, 1))
        await asyncio.sleep(0.005)  # the first request is running alone
        tasks = [first] + [asyncio.ensure_future(b.submit({"x": x}, 1)) for x in rows(4)]
        await asyncio.sleep(0)  # the others are queued behind it
        held = time.monotonic()
        time.sleep(0.3)  # the event loop is busy elsewhere
        answers = await asyncio.gather(*tasks)
        await b.close()
        return held, answers

    held, answers = asyncio.run(main())
    assert len(answers) == 5
    assert len(starts) == 2 and all(t < held + 0.3 for t in starts)  # both batches ran while the loop was held


def test_a_batching_window_gathers_requests_that_arrive_within_it():
    rec = Recorder(seconds=0.001)
    serve(rec, rows(8), lanes=1, stagger=0.005, max_delay=0.1)
    assert len(rec.calls) < 4 and sum(n for _, n in rec.calls) == 8


def test_closing_answers_what_was_queued_and_refuses_what_comes_after():
    rec = Recorder(seconds=0.02)

    async def main():
        b = Batcher(rec.run)
        b.start()
        tasks = [asyncio.ensure_future(b.submit({"x": x}, 1)) for x in rows(6)]
        await asyncio.sleep(0)
        await b.close()
        with pytest.raises(Overloaded):
            await b.submit({"x": rows(1)[0]}, 1)
        return await asyncio.gather(*tasks)

    answers = asyncio.run(main())
    assert [float(out["y"][0, 0]) for out, _ in answers] == [2.0 * i for i in range(6)]


def test_lanes_sharing_a_trickling_queue_answer_every_request_exactly_once():
    rec = Recorder(seconds=0.004)
    requests = rows(200)
    answers = serve(rec, requests, lanes=3, max_batch=4, stagger=0.0005)
    assert all(isinstance(a, tuple) for a in answers), [a for a in answers if not isinstance(a, tuple)][:3]
    for x, (outputs, _) in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(outputs["y"], x * 2)
    assert sum(n for _, n in rec.calls) == 200


def test_a_fault_outside_the_run_answers_the_batch_and_the_lane_goes_on(monkeypatch):
    from onnxguard.serve import batching

    real = batching._trim
    calls = {"n": 0}

    def broken(*args):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("a bug")
        return real(*args)

    monkeypatch.setattr(batching, "_trim", broken)
    rec = Recorder(seconds=0.001)

    async def main():
        b = Batcher(rec.run)
        b.start()
        with pytest.raises(ValueError, match="a bug"):
            await b.submit({"x": rows(1)[0]}, 1)
        later = await asyncio.gather(*(b.submit({"x": x}, 1) for x in rows(3)))  # the same lane, still there
        await b.close()
        return later

    assert len(asyncio.run(main())) == 3


class Texts:
    """A text model stand-in: each row's logit is the sum of its ids, its per-token output the ids; records the
    width of every run."""

    def __init__(self) -> None:
        self.widths: list[tuple[int, int]] = []

    def run(self, inputs):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        self.widths.append(ids.shape)
        return {"logits": (ids * mask).sum(axis=1, keepdims=True).astype(np.float32), "tokens": ids * 10}


def texts(lengths: list[int], rows_each: int = 1) -> list[dict[str, np.ndarray]]:
    return [{"input_ids": np.arange(1, n + 1, dtype=np.int64)[None].repeat(rows_each, 0) + i,
             "attention_mask": np.ones((rows_each, n), np.int64)} for i, n in enumerate(lengths)]


def serve_texts(model: Texts, requests: list[dict[str, np.ndarray]], cost: Cost | None):
    async def main():
        b = Batcher(model.run, cost=cost)
        b.start()
        with b._cv:  # hold the lane until every request is queued: they form one batch
            tasks = [asyncio.ensure_future(b.submit(r, len(r["input_ids"]))) for r in requests]
            await asyncio.sleep(0.05)
        answers = await asyncio.gather(*tasks)
        await b.close()
        return answers
    return asyncio.run(main())


@pytest.mark.parametrize(("cost", "widths"), [
    (Cost(1000.0, 1.0, 0.0), [(5, 12)]),  # a run costs far more than padding: one run, padded to the longest
    (Cost(0.0, 1.0, 0.0), [(2, 4), (1, 5), (2, 12)]),  # padding costs, runs do not: one run per length
    (None, [(3, 5), (2, 12)]),  # no measured cost: lengths within LENGTH_RATIO share a run
])
def test_text_requests_are_split_by_length_where_the_cost_says_so(cost, widths):
    model = Texts()
    requests = texts([12, 4, 5, 4, 12])
    answers = serve_texts(model, requests, cost)
    assert sorted(model.widths) == sorted(widths)
    for r, (out, _) in zip(requests, answers, strict=True):  # each request its own rows, trimmed to its length
        np.testing.assert_array_equal(out["logits"], r["input_ids"].sum(axis=1, keepdims=True))
        np.testing.assert_array_equal(out["tokens"], r["input_ids"] * 10)


def test_a_request_of_several_rows_is_never_split():
    model = Texts()
    requests = texts([4, 9, 4], rows_each=3)
    answers = serve_texts(model, requests, Cost(0.0, 1.0, 0.0))
    assert sorted(model.widths) == [(3, 9), (6, 4)]
    for r, (out, _) in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(out["tokens"], r["input_ids"] * 10)
