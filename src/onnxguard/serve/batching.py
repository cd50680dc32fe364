"""Dynamic batching: requests queued while a batch runs are run together as the next batch, in lanes.

``Batcher.submit(inputs, rows)`` queues a validated request and returns its outputs. One dispatcher per model
forms batches from what is queued (up to ``max_batch`` rows), groups text requests by length so that padding stays
small, pads each group to its longest sequence, runs it in the thread pool (off the event loop) and hands each
request its own rows back, trimmed to its own length.

Lanes (opt-in, ``lanes`` > 1). A session whose runs are split over all the cores spends about a fifth more CPU
per row than one thread per run (measured on this 2-core host, DistilBERT-base INT8, batch 16, in process: 4.3
against 3.4 CPU-ms per text): its threads wait for each other at every operator. With lanes, under load a model
runs up to ``lanes`` batches at once, each on one lane (``run_lane``: a second session with ``cores / lanes``
threads); a lone request with nothing else running takes the whole machine (``run``) for the lowest latency.
While other lanes are busy the next batch waits for about as many rows as the last batch had (under closed-loop
load, the cohort that comes back) until one of the busy lanes finishes (``gather`` seconds at most). Through the
server on this host, with the load generator on the same cores, two lanes formed batches of 5-8 texts at
concurrency 16 but answered 135-159 texts/s against 176-178 for one lane (the event loop, starved of a core,
returns the cohort later), so one lane is the default. ``max_delay`` > 0 makes every batch wait that long for
more requests. With no load a request runs at once, alone: batching adds no latency at concurrency 1.

The queue is bounded in rows: past ``max_queue`` a request is refused at once (``Overloaded``: HTTP 503 with
``Retry-After``) instead of growing memory. A batch the runtime refuses is re-run one request at a time, so one
bad request fails alone.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxguard.errors import InputError

Arrays = dict[str, np.ndarray]
# Inputs a tokenizer makes, and the value that pads each (the pad token's id is the model's; masks pad with 0).
SEQUENCE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# Requests of lengths within this ratio share a batch: padding a 16-token text to 128 costs 8x its own work.
LENGTH_RATIO = 1.5
# Seconds at most a batch waits for its rows while other lanes keep the cores busy (it stops waiting as soon as one
# of them finishes): a bound, not the usual wait.
GATHER_SECONDS = 0.05


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


class Batcher:
    """The batching queue of one model. ``run`` maps a batch of inputs to its outputs on every core, ``run_lane``
    on one lane's share of them (both blocking and thread-safe); without ``run_lane`` there is one lane."""

    def __init__(self, run: Callable[[Arrays], Arrays], executor: Executor, *, max_batch: int = 32,
                 max_delay: float = 0.0, max_queue: int = 512, pad_id: int = 0,
                 on_batch: Callable[[int], None] | None = None, run_lane: Callable[[Arrays], Arrays] | None = None,
                 lanes: int = 1, gather: float = GATHER_SECONDS) -> None:
        self._run, self._run_lane, self._executor = run, run_lane, executor
        self.lanes = max(1, lanes) if run_lane is not None else 1
        self.max_batch, self.max_delay, self.max_queue, self.pad_id = max_batch, max_delay, max_queue, pad_id
        self.gather = gather
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued_rows = 0
        self._ids = itertools.count(1)
        self._worker: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._busy = 0  # lanes in use; a run on every core holds them all
        self._last_rows = 1  # rows of the batch that finished last: under steady load, about what comes back next
        self._finished = 0  # batches finished so far
        self._freed: asyncio.Event | None = None
        self._closing = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def start(self) -> None:
        """Start the dispatcher (on the running event loop)."""
        if self._worker is None:
            self._freed = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work())

    async def submit(self, inputs: Arrays, rows: int) -> tuple[Arrays, int]:
        """Queue a validated request; its outputs and the id of the batch it ran in."""
        if self._closing:
            raise Overloaded(1.0)
        if self._queued_rows + rows > self.max_queue:
            raise Overloaded(1.0)
        length = _length(inputs)
        pending = _Pending(inputs, rows, length, asyncio.get_running_loop().create_future())
        self._queued_rows += rows
        self._queue.put_nowait(pending)
        return await pending.future

    async def close(self) -> None:
        """Stop taking requests, finish every queued one, stop the dispatcher."""
        self._closing = True
        await self._queue.join()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    async def _lane(self, n: int) -> None:
        """Wait until ``n`` lanes are free, and take them."""
        assert self._freed is not None
        while self.lanes - self._busy < n:
            self._freed.clear()
            await self._freed.wait()
        self._busy += n

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            alone = self._busy == 0 and self._queue.empty() and self.max_delay <= 0
            if alone or self.lanes == 1:  # every core: a lone request, or one lane only
                await self._lane(self.lanes)
                taken, fn = self.lanes, self._run
                limit = self.max_batch
            else:
                await self._lane(1)
                taken, fn = 1, self._run_lane or self._run
                free = self.lanes - self._busy + 1
                # Share what is queued among the free lanes; busy lanes elsewhere: wait a little for a fuller share.
                limit = min(self.max_batch, max(math.ceil((self._queued_rows) / free), 1))
                if self._busy > 1:  # the cores are busy: wait for about the rows the last batch had (a cohort)
                    limit = min(self.max_batch, max(limit, self._last_rows))
            rows = batch[0].rows
            cohort = taken == 1 and self._busy > 1  # other lanes keep the cores busy: gather what comes back
            wait = max(self.max_delay, self.gather if cohort else 0.0)
            deadline, finished = loop.time() + wait, self._finished
            while rows < limit:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    if wait <= 0 or loop.time() >= deadline or (cohort and self._finished != finished):
                        break  # waited enough, or a lane came free: run what there is
                    got = await self._next(deadline - loop.time(), until_finished=cohort)
                    if got is None:
                        continue
                    nxt = got
                batch.append(nxt)
                rows += nxt.rows
            task = loop.create_task(self._run_batch(batch, fn, taken))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next(self, timeout: float, until_finished: bool) -> _Pending | None:
        """The next queued request within ``timeout``; None at the timeout or, ``until_finished``, once a batch
        finishes first."""
        assert self._freed is not None
        get = asyncio.ensure_future(self._queue.get())
        waiters: set[asyncio.Future[Any]] = {get}
        if until_finished:
            self._freed.clear()
            waiters.add(asyncio.ensure_future(self._freed.wait()))
        done, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()  # a cancelled get takes nothing from the queue
        return get.result() if get in done else None

    async def _run_batch(self, batch: list[_Pending], fn: Callable[[Arrays], Arrays], taken: int) -> None:
        try:
            for group in _groups(batch):
                await self._run_group(group, fn)
        except BaseException as e:  # an unexpected failure is every waiting request's answer, never a hang
            for p in batch:
                _settle(p, exc=e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._last_rows = sum(p.rows for p in batch)
            self._finished += 1
            self._busy -= taken
            assert self._freed is not None
            self._freed.set()
            for p in batch:
                self._queued_rows -= p.rows
                self._queue.task_done()

    async def _run_group(self, group: list[_Pending], fn: Callable[[Arrays], Arrays]) -> None:
        batch_id = next(self._ids)
        loop = asyncio.get_running_loop()
        merged = _merge([p.inputs for p in group], self.pad_id)
        try:
            outputs = await loop.run_in_executor(self._executor, fn, merged)
        except InputError as e:
            if len(group) == 1:
                _settle(group[0], exc=e)
                return
            for p in group:  # one bad request must not fail the others: each alone
                await self._run_group([p], fn)
            return
        if self._on_batch is not None:
            self._on_batch(sum(p.rows for p in group))
        start = 0
        width = max((p.length or 0) for p in group)
        for p in group:
            mine = {k: _trim(v[start:start + p.rows], p.length, width) for k, v in outputs.items()}
            start += p.rows
            _settle(p, result=(mine, batch_id))


def _settle(p: _Pending, result: tuple[Arrays, int] | None = None, exc: BaseException | None = None) -> None:
    if p.future.done():  # the caller went away (a cancelled request)
        return
    if exc is not None:
        p.future.set_exception(exc)
    else:
        assert result is not None
        p.future.set_result(result)


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


def _groups(batch: list[_Pending]) -> list[list[_Pending]]:
    """Stackable requests together; text requests sorted by length and split where lengths differ too much."""
    by_key: dict[tuple[object, ...], list[_Pending]] = {}
    for p in batch:
        by_key.setdefault(_key(p), []).append(p)
    groups: list[list[_Pending]] = []
    for members in by_key.values():
        if members[0].length is None:
            groups.append(members)
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
