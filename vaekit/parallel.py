"""Shards of work done side by side in worker processes: the codec's shards, the batches of a
log-likelihood estimate.

For the codec, threads would share one Python lock: its many small NumPy steps hold it, and two threads
coded only 1.35 times as fast as one; two processes reach 1.5 to 1.7 times (benchmarks/compression.py,
10,000 Fashion-MNIST images). For importance sampling, two one-thread processes estimated a deep
model's log-likelihood 1.13 times as fast as one two-thread process (benchmarks/nll_workers.py, 2
cores), since torch's small operations split poorly over threads. Workers start fresh (forkserver or
spawn, never a bare fork: a forked child of a process whose OpenMP threads have run can hang), so, as
with any `multiprocessing` code, a script that uses several workers must guard its entry point with
`if __name__ == "__main__":`.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import torch

from vaekit.errors import OptionError

_POLL_SECONDS = 0.1
_ORPHAN_POLL_SECONDS = 1.0

# set in each worker by `_start_worker`: the shared first argument of every task, and where progress goes
_shared: object = None
_progress_queue = None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _start_method() -> str:
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _exit_when_orphaned(owner: int) -> None:
    # An owner killed outright (SIGKILL, or SIGTERM, which skips the pool's shutdown) would leave its
    # workers running their batches on the cores for minutes, and nothing else tells them: under forkserver
    # their parent is the forkserver, which they themselves keep alive. So they watch the owner's process.
    while True:
        time.sleep(_ORPHAN_POLL_SECONDS)
        try:
            os.kill(owner, 0)  # signal 0: is it there?
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # there, though another user's (its number reused): not ours to judge
            pass


def _start_worker(shared: object, progress_queue, threads: int, owner: int) -> None:
    global _shared, _progress_queue
    _shared, _progress_queue = shared, progress_queue
    torch.set_num_threads(threads)  # the cores shared out, not every worker on all of them
    threading.Thread(target=_exit_when_orphaned, args=(owner,), daemon=True).start()


def _worker_count(workers: int | None, shards: int) -> int:
    if workers is not None and workers < 1:
        raise OptionError(f"workers must be >= 1, got {workers}")
    return min(workers or available_cores(), shards)


def _pool(context, workers: int, shared: object, progress_queue=None):
    threads = max(1, available_cores() // workers)
    initargs = (shared, progress_queue, threads, os.getpid())
    return context.Pool(workers, initializer=_start_worker, initargs=initargs)


def _report(items: int) -> None:
    _progress_queue.put(items)


def _run(job: tuple[Callable, tuple, bool]):
    # a task told of progress reports it; the others are called without the keyword
    task, args, report = job
    return task(_shared, *args, progress=_report) if report else task(_shared, *args)


def map_shards(
    task: Callable,
    shared: object,
    shards: Sequence[tuple],
    workers: int | None,
    progress: Callable[[int], None] | None = None,
) -> list:
    """[task(shared, *shard) for shard in shards], in order, on up to `workers` processes (None: every core
    this process may use). `task` must be a module-level function, `shared` and the shards picklable; `task`
    takes a `progress` keyword (default None), and `progress(n)` hears, in this process, of every n items the
    workers coded."""
    workers = _worker_count(workers, len(shards))
    if workers <= 1:
        return [task(shared, *shard, progress=progress) for shard in shards]
    context = multiprocessing.get_context(_start_method())
    # A SimpleQueue writes synchronously: once a task has returned, all it reported can be read here
    progress_queue = context.SimpleQueue()
    with _pool(context, workers, shared, progress_queue) as pool:
        pending = pool.map_async(_run, [(task, shard, progress is not None) for shard in shards], chunksize=1)
        while not (pending.ready() and progress_queue.empty()):
            if progress_queue.empty():
                pending.wait(_POLL_SECONDS)
            else:
                progress(progress_queue.get())
        return pending.get()  # raises a worker's error here, e.g. a CodecError for a corrupt shard


def imap_shards(task: Callable, shared: object, shards: Sequence[tuple], workers: int | None) -> Iterator:
    """task(shared, *shard) for each shard, on up to `workers` processes (None: every core), yielded in
    order, each as soon as it and every shard before it are done, so that a caller can save what is done.
    In this process, with its threads, when one worker would do."""
    workers = _worker_count(workers, len(shards))
    if workers <= 1:
        yield from (task(shared, *shard) for shard in shards)
        return
    with _pool(multiprocessing.get_context(_start_method()), workers, shared) as pool:
        yield from pool.imap(_run, [(task, shard, False) for shard in shards])
