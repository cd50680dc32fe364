"""Dynamic batching: requests queued while a batch runs are run together as the next batch, in lanes.

``Batcher.submit(inputs, rows)`` queues a validated request and returns its outputs. Each lane is a thread of its
own that takes what is queued (up to ``max_batch`` rows) the moment its last batch is done, groups text requests by
length so that padding stays small, pads each group to its longest sequence, runs it (off the event loop) and hands
each request its own rows back, trimmed to its own length, with one wake-up of the event loop per group.

How text requests are grouped: by the cost of a run measured on this host at start for the session that runs them
(``cost``, ``lane_cost``: :class:`onnxguard.runtime.Cost`, an overhead per run plus a cost per token), the
cheapest split into at most four groups (:func:`onnxguard.runtime.lengths.buckets`, exact). A run costs about
2 ms before its first token on one thread of this project's 2-core AMD EPYC (DistilBERT-base INT8), and a token
of padding costs what a real one does, so batches of short texts of 14-19 tokens are split where their lengths
differ: in process, two one-thread sessions side by side answered 170-203 texts/s in batches of 8 split so,
against 162-187 padded to each batch's longest (3 rounds). Without a measured cost, lengths within
``LENGTH_RATIO`` of each other share a group.

Why threads that take their own next batch: with a dispatcher on the event loop, the loop first answered the
requests of a finished batch (serialising, auditing and sending each) and only then formed and started the next
one, so the model waited on the loop between batches. Measured through the server with wrk at concurrency 16
(DistilBERT-base INT8, one short text per request, 2-core AMD EPYC, loaded host): batches of 8 rows ran 55 ms with
a median gap of 5.7 ms between them, 9.5 % of the model's time idle.

Lanes (``lanes`` > 1; the server has two on a host with two cores or more). A session whose runs are split over all
the cores spends more CPU per row than one thread per run: its threads wait for each other at every operator. With
lanes, under load a model runs up to ``lanes`` batches at once, each on one lane (``run_lane``: a second session
with ``cores / lanes`` threads); a lone request with nothing else running takes the whole machine (``run``) for the
lowest latency. A free lane takes its share of what is queued at once (what is queued divided among the free lanes)
and never waits for more while others run: measured through the server with wrk on the same cores (2-core AMD EPYC,
AVX2 only, DistilBERT-base INT8, one short text per request, concurrency 16, 2 lanes, grouped by cost), the lanes
were busy 89-91 % of the time and answered 174-184 texts/s, against 79-87 % busy and 156-171 texts/s when a free
lane waited up to 50 ms for about as many rows as the last batch had (2 rounds each, alternating). ``max_delay`` > 0
makes every batch wait that long for more requests. With no load a request runs at once, alone: batching adds no
latency at concurrency 1.

The queue is bounded in rows: past ``max_queue`` a request is refused at once (``Overloaded``: HTTP 503 with
``Retry-After``) instead of growing memory. A batch the runtime refuses is re-run one request at a time, so one
bad request fails alone.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from onnxguard.errors import InputError
from onnxguard.runtime.lengths import Cost, buckets

Arrays = dict[str, np.ndarray]
# Inputs a tokenizer makes, and the value that pads each (the pad token's id is the model's; masks pad with 0).
SEQUENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Without a measured cost, requests of lengths within this ratio share a batch: padding a 16-token text to 128 costs
# 8x its own work.
LENGTH_RATIO = 1.5


class Overloaded(Exception):  # noqa: N818 - the name a 503 handler reads well with
    """The queue is full: the request was not accepted (HTTP 503, retry later)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"the server is at capacity; retry after {retry_after:g} s")
        self.retry_after = retry_after


@dataclass
class _Pending:
    inputs: Arrays
    rows: int
    length: int | None  # sequence length (text requests), for grouping and trimming
    future: asyncio.Future[tuple[Arrays, int]] = field(repr=False)


# What a group's run hands back to the event loop: each request with its outputs and batch id, or its error.
_Answer = tuple[_Pending, tuple[Arrays, int] | None, BaseException | None]


class Batcher:
    """The batching queue of one model. ``run`` maps a batch of inputs to its outputs on every core, ``run_lane``
    on one lane's share of them (both blocking and thread-safe); without ``run_lane`` there is one lane. ``cost``
    and ``lane_cost``: what a run of each costs by rows and width (text models), for grouping by length."""

    def __init__(self, run: Callable[[Arrays], Arrays], *, max_batch: int = 32, max_delay: float = 0.0,
                 max_queue: int = 512, pad_id: int = 0, on_batch: Callable[[int], None] | None = None,
                 run_lane: Callable[[Arrays], Arrays] | None = None, lanes: int = 1,
                 name: str = "model", cost: Cost | None = None,
                 lane_cost: Cost | None = None) -> None:
        self._run, self._run_lane = run, run_lane
        self._cost, self._lane_cost = cost, lane_cost
        self.lanes = max(1, lanes) if run_lane is not None else 1
        self.max_batch, self.max_delay, self.max_queue, self.pad_id = max_batch, max_delay, max_queue, pad_id
        self.name = name
        self._on_batch = on_batch
        self._ids = itertools.count(1)
        # Everything below is guarded by the condition's lock: the event loop appends, the lanes take.
        self._cv = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._waiting_rows = 0  # rows queued and not yet taken by a lane
        self._queued_rows = 0  # rows accepted and not yet answered (the bound ``max_queue`` applies to)
        self._busy = 0  # lanes in use; a run on every core holds them all
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        """Start the lanes; answers go back to the running event loop."""
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        for i in range(self.lanes):
            thread = threading.Thread(target=self._work, name=f"onnxguard-batch-{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def submit(self, inputs: Arrays, rows: int) -> tuple[Arrays, int]:
        """Queue a validated request; its outputs and the id of the batch it ran in."""
        pending = _Pending(inputs, rows, _length(inputs), asyncio.get_running_loop().create_future())
        with self._cv:
            if self._closing or self._queued_rows + rows > self.max_queue:
                raise Overloaded(1.0)
            self._queue.append(pending)
            self._queued_rows += rows
            self._waiting_rows += rows
            self._cv.notify()
        return await pending.future

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, stop the lanes."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        threads, self._threads = self._threads, []
        for thread in threads:
            await asyncio.to_thread(thread.join)

    # -- the lanes (threads) ------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cv:
                batch, taken, alone = self._take()
            if not batch:
                return  # closing, and nothing is left
            lane = self._run_lane if not alone and self.lanes > 1 else None
            fn, cost = (lane, self._lane_cost) if lane is not None else (self._run, self._cost)
            answers: list[_Answer] = []
            try:
                for group in _groups(batch, cost):
                    self._answer(answers)  # the group before this one's
                    answers = self._run_group(group, fn)
            except Exception as e:  # noqa: BLE001 - a fault outside the run: each request not answered gets it
                answers = [(p, None, e) for p in batch]
            finally:
                with self._cv:
                    self._busy -= taken
                    self._queued_rows -= sum(p.rows for p in batch)
                    if self._queue:  # a lane may be waiting for this one to free up (else none is woken for nothing)
                        self._cv.notify_all()
            # The last answers go once nothing is left to do but wait, so that the event loop, woken, finds the GIL
            # free: with the other lane no longer woken after every batch, a lone request took 0.12 ms less
            # (median of 1500 paired differences through two servers, 95 % interval 0.04-0.18 ms; 2-core AMD
            # EPYC, AVX2 only, DistilBERT-base INT8).
            self._answer(answers)

    def _take(self) -> tuple[list[_Pending], int, bool]:
        """Under the lock: wait for a request and a free lane, then take a batch (empty: closing and drained)."""
        cv = self._cv
        while True:
            while not self._queue or self._busy >= self.lanes:
                if self._closing and not self._queue:
                    return [], 0, False
                cv.wait()
            alone = self._busy == 0 and len(self._queue) == 1 and self.max_delay <= 0
            if alone or self.lanes == 1:  # every core (no lane is busy): a lone request, or one lane only
                taken, limit = self.lanes, self.max_batch
            else:  # one lane: its share of what is queued, divided among the free lanes
                taken = 1
                limit = min(self.max_batch, max(-(-self._waiting_rows // (self.lanes - self._busy)), 1))
            if self.max_delay > 0:
                deadline = time.monotonic() + self.max_delay
                while self._waiting_rows < limit and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cv.wait(left)
                if not self._queue or self._busy + taken > self.lanes:
                    continue  # another lane took the requests, or the lanes, while this one waited
            batch = [self._queue.popleft()]
            rows = batch[0].rows
            while self._queue and rows + self._queue[0].rows <= limit:
                batch.append(self._queue.popleft())
                rows += batch[-1].rows
            self._waiting_rows -= rows
            self._busy += taken
            return batch, taken, alone

    def _run_group(self, group: list[_Pending], fn: Callable[[Arrays], Arrays]) -> list[_Answer]:
        batch_id = next(self._ids)
        try:
            outputs = fn(_merge([p.inputs for p in group], self.pad_id))
        except InputError as e:
            if len(group) == 1:
                return [(group[0], None, e)]
            # one bad request must not fail the others: each alone
            return [answer for p in group for answer in self._run_group([p], fn)]
        except Exception as e:  # noqa: BLE001 - not swallowed: it is the answer of every request in the group
            return [(p, None, e) for p in group]
        if self._on_batch is not None:
            self._on_batch(sum(p.rows for p in group))
        start, width = 0, max((p.length or 0) for p in group)
        answers: list[_Answer] = []
        for p in group:
            mine = {k: _trim(v[start:start + p.rows], p.length, width) for k, v in outputs.items()}
            start += p.rows
            answers.append((p, (mine, batch_id), None))
        return answers

    def _answer(self, answers: list[_Answer]) -> None:
        """Hand a group's answers to the event loop: one wake-up for all of them."""
        assert self._loop is not None
        if not answers:
            return
        try:
            self._loop.call_soon_threadsafe(_settle, answers)
        except RuntimeError:  # the event loop is closed (a forced exit): nobody is waiting any more
            pass


def _settle(answers: list[_Answer]) -> None:
    for p, result, exc in answers:
        if p.future.done():  # the caller went away (a cancelled request)
            continue
        if result is not None:
            p.future.set_result(result)
        else:
            p.future.set_exception(exc or RuntimeError("no answer"))


def _length(inputs: Mapping[str, np.ndarray]) -> int | None:
    for name in SEQUENCE_INPUTS:
        arr = inputs.get(name)
        if arr is not None and arr.ndim >= 2:
            return int(arr.shape[1])
    return None
def _key(p: _Pending) -> tuple[object, ...]:
    """Requests whose inputs can be stacked: same names, dtypes and non-batch shapes (but the sequence axis)."""
    return tuple(sorted((k, v.dtype.str, v.shape[2:] if k in SEQUENCE_INPUTS else v.shape[1:])
                        for k, v in p.inputs.items()))


def _groups(batch: list[_Pending], cost: Cost | None = None) -> list[list[_Pending]]:
    """Stackable requests together; text requests split by length where ``cost`` says that is cheaper than
    padding (without a cost: sorted by length and split where lengths differ too much)."""
    if len(batch) == 1:  # a lone request (every request at concurrency 1): nothing to group
        return [batch]
    by_key: dict[tuple[object, ...], list[_Pending]] = {}
    for p in batch:
        by_key.setdefault(_key(p), []).append(p)
    groups: list[list[_Pending]] = []
    for members in by_key.values():
        if members[0].length is None:
            groups.append(members)
            continue
        if cost is not None:  # a request's rows share its length: never split (see buckets)
            owner = np.repeat(np.arange(len(members)), [p.rows for p in members])
            needs = np.array([members[i].length or 0 for i in owner])
            groups.extend([members[i] for i in dict.fromkeys(owner[b.rows].tolist())] for b in buckets(needs, cost))
            continue
        current: list[_Pending] = []
        for p in sorted(members, key=lambda q: q.length or 0):
            if current and (p.length or 0) > LENGTH_RATIO * max(current[0].length or 1, 1):
                groups.append(current)
                current = []
            current.append(p)
        groups.append(current)
    return groups


def _merge(requests: list[Arrays], pad_id: int) -> Arrays:
    if len(requests) == 1:
        return requests[0]
    merged: Arrays = {}
    for name in requests[0]:
        parts = [r[name] for r in requests]
        if name in SEQUENCE_INPUTS and len({a.shape[1] for a in parts}) > 1:
            width = max(a.shape[1] for a in parts)
            value = pad_id if name == "input_ids" else 0
            parts = [np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2), constant_values=value)
                     for a in parts]
        merged[name] = np.concatenate(parts, axis=0)
    return merged


def _trim(out: np.ndarray, length: int | None, width: int) -> np.ndarray:
    """A request's own tokens of a per-token output padded to the group's width (right padding)."""
    if length is not None and length < width and out.ndim >= 2 and out.shape[1] == width:
        return out[:, :length]
    return out
