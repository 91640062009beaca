"""The model's work queue: requests wait in a bounded queue, in the order they came, for one of
``workers`` threads that run the model; a full queue is refused at once (503 with
``Retry-After``), and a request whose client has gone is dropped before the model runs it.

Work of a batched kind (search) is taken in batches: a worker that takes one such request
waits ``window`` seconds for others of the kind to join, up to ``max_batch``, and runs them
as one (the runner gets every request's arguments and returns every answer: one forward pass
for their texts, one for their re-ranking). Other work (grounding, answers) runs one request
at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..core.errors import ConfigError

log = logging.getLogger("mvptr.serve")


class QueueFull(Exception):
    """The queue holds ``capacity`` requests already."""


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


@dataclass
class Job:
    kind: str
    args: tuple
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    abandoned: bool = False
    queued: float = field(default_factory=time.perf_counter)


def _settle(future: asyncio.Future, value, error: BaseException | None) -> None:
    if future.done():  # its client is gone and its coroutine has stopped waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


async def _until_disconnect(receive) -> None:
    """Returns once the client has closed its connection (as Starlette's streaming responses
    listen for it: the request's messages after its body are only a disconnect)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class ModelQueue:
    """``runners[kind](list of args) -> list of answers``, run by ``workers`` threads;
    ``batched``: the kinds taken in batches."""

    def __init__(self, runners: dict[str, Callable[[list[tuple]], list]], workers: int = 1, capacity: int = 32,
                 window: float = 0.005, max_batch: int = 16, batched: Sequence[str] = ("search",)):
        if workers < 1 or capacity < 1 or max_batch < 1 or window < 0:
            raise ConfigError("workers, capacity and max_batch must be at least 1, the window at least 0")
        self.runners, self.capacity, self.window, self.max_batch = runners, capacity, window, max_batch
        self.batched = set(batched)
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self.dropped = self.batches = self.served = 0
        self._threads = [threading.Thread(target=self._work, name=f"mvptr-model-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def __len__(self) -> int:
        with self._cond:
            return sum(not j.abandoned for j in self._jobs)

    def submit(self, kind: str, args: tuple, loop: asyncio.AbstractEventLoop) -> Job:
        """Queue a request (QueueFull when ``capacity`` requests wait already)."""
        with self._cond:
            waiting = [j for j in self._jobs if not j.abandoned]
            if len(waiting) >= self.capacity:
                raise QueueFull(f"{len(waiting)} requests are waiting for the model")
            self.dropped += len(self._jobs) - len(waiting)
            self._jobs = deque(waiting)
            job = Job(kind, args, loop, loop.create_future())
            self._jobs.append(job)
            self._cond.notify()
        return job

    async def run(self, kind: str, args: tuple, receive=None):
        """The answer to one request, waited for without holding a thread; with ``receive``
        (the request's ASGI receive), ClientGone as soon as its client disconnects, and the
        request is dropped if the model has not taken it yet."""
        job = self.submit(kind, args, asyncio.get_running_loop())
        if receive is None:
            return await job.future
        gone = asyncio.ensure_future(_until_disconnect(receive))
        try:
            await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job.future.done():
            return job.future.result()
        with self._cond:
            job.abandoned = True
        raise ClientGone()

    def _take(self) -> list[Job]:
        """The next request, and those of its kind that join it within the window."""
        with self._cond:
            while True:
                while self._jobs and self._jobs[0].abandoned:
                    self._jobs.popleft()
                    self.dropped += 1
                if self._jobs:
                    break
                self._cond.wait()
            first = self._jobs.popleft()
            if first.kind not in self.batched or self.max_batch == 1:
                return [first]
            deadline = time.perf_counter() + self.window
            while True:
                alive = [j for j in self._jobs if j.kind == first.kind and not j.abandoned]
                left = deadline - time.perf_counter()
                if len(alive) + 1 >= self.max_batch or left <= 0:
                    break
                self._cond.wait(left)
            batch = [first, *alive[: self.max_batch - 1]]
            taken = {id(j) for j in batch}
            self._jobs = deque(j for j in self._jobs if id(j) not in taken)
            return batch

    def _work(self) -> None:
        while True:
            batch = self._take()
            with self._cond:  # a client may have gone while the batch gathered
                alive = [j for j in batch if not j.abandoned]
                self.dropped += len(batch) - len(alive)
            if not alive:
                continue
            batch = alive
            answers, errors = self._run(batch[0].kind, [j.args for j in batch])
            self.batches += 1
            self.served += len(batch)
            for job, answer, error in zip(batch, answers, errors):
                job.loop.call_soon_threadsafe(_settle, job.future, answer, error)

    def _run(self, kind: str, args: list[tuple]) -> tuple[list, list]:
        """The answers to a batch; when it fails, each request alone, so that one bad request
        fails by itself (its error is answered as a 500; the worker goes on)."""
        try:
            return self.runners[kind](args), [None] * len(args)
        except Exception as err:
            if len(args) == 1:
                return [None], [err]
        answers, errors = [], []
        for a in args:
            answer, error = self._run(kind, [a])
            answers += answer
            errors += error
        return answers, errors
