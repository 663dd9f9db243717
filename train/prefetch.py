"""Batches assembled ahead of the step, so the student never waits for its inputs.

Each batch has a *plan* (rows, views, features, labels: everything random about it)
and a *build* (decode or gather the inputs, make tensors, pin them). One producer
thread walks the plans in order -- the only code that draws from the epoch's
generator, so the seed alone decides every batch -- and hands each plan to a pool
of worker threads; the step takes finished batches in order from a bounded queue.
The worker count changes when a batch is ready, never what it holds.

Threads, not processes: decoding (Pillow) and gathering (numpy, torch) release the
GIL, nothing is pickled, and store handles (h5py included) are never forked.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

P = TypeVar("P")
B = TypeVar("B")

_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetch(plans: Iterable[P], build: Callable[[P], B], workers: int, depth: int) -> Iterator[B]:
    """``build(plan)`` for every plan, in plan order; up to ``depth`` batches ready ahead.

    ``workers`` = 0 builds each batch on the caller's thread when it is asked for (no
    overlap). Close the iterator (or exhaust it) to stop the producer and the workers.
    """
    if workers <= 0:
        for plan in plans:
            yield build(plan)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featcache-batch")
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for plan in plans:
                if stop.is_set() or not put(pool.submit(build, plan)):
                    return
            put(_END)
        except BaseException as exc:  # the plans' own errors reach the step, in order
            put(_Failed(exc))

    producer = threading.Thread(target=produce, name="featcache-plans", daemon=True)
    producer.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            assert isinstance(item, Future)
            yield item.result()
    finally:
        stop.set()
        while True:  # unblock the producer and drop batches nobody will take
            try:
                item = ready.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, Future):
                item.cancel()
        producer.join()
        pool.shutdown(wait=True, cancel_futures=True)
