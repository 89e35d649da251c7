"""Stand-in for A1111 1.10.1 ``modules/call_queue.py``: the wrappers UI event handlers go through.

* ``wrap_gradio_gpu_call(func, extra_outputs)``: a first argument ``"task(...)"`` is the task id (queued, then
  started/finished in ``progress``); runs ``func`` under ``queue_lock`` between ``shared.state.begin(job=id)`` and
  ``shared.state.end()``; then as ``wrap_gradio_call(..., add_stats=True)``.
* ``wrap_gradio_call(func, extra_outputs, add_stats)``: an exception is printed and becomes ``extra_outputs``
  (default ``[None, '']``) plus ``<div class='error'>Type: message</div>``, never raised; the state's job fields
  are reset; with ``add_stats`` a "Time taken" block is appended to the last (HTML) output. No memory stats.
"""

import html
import threading
import time
import functools

from modules import errors, progress, shared

queue_lock = threading.Lock()  # 1.10.1: a FIFO lock


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)

    return f


def wrap_gradio_gpu_call(func, extra_outputs=None):
    @functools.wraps(func)
    def f(*args, **kwargs):
        first = args[0] if args else None
        task = first if isinstance(first, str) and first.startswith("task(") and first.endswith(")") else None
        if task is not None:
            progress.add_task_to_queue(task)
        with queue_lock:
            shared.state.begin(job=task)
            progress.start_task(task)
            try:
                result = func(*args, **kwargs)
                progress.record_results(task, result)
            finally:
                progress.finish_task(task)
                shared.state.end()
        return result

    return wrap_gradio_call(f, extra_outputs, add_stats=True)


def wrap_gradio_call(func, extra_outputs=None, add_stats=False):
    @functools.wraps(func)
    def f(*args, **kwargs):
        started = time.perf_counter()
        try:
            outputs = list(func(*args, **kwargs))
        except Exception as e:
            errors.report("Error completing request\nArguments: %s %s" % (str(args)[:10000], kwargs), exc_info=True)
            text = html.escape("%s: %s" % (type(e).__name__, e))
            outputs = list(extra_outputs if extra_outputs is not None else [None, ""]) + ["<div class='error'>%s</div>" % text]
        finally:
            state = shared.state
            state.skipped = state.interrupted = state.stopping_generation = False
            state.job, state.job_count = "", 0

        if add_stats:
            minutes, seconds = divmod(time.perf_counter() - started, 60)
            took = ("%d min. " % minutes if minutes else "") + "%.1f sec." % seconds
            outputs[-1] += ("<div class='performance'><p class='time'>Time taken: <wbr>"
                            "<span class='measurement'>%s</span></p></div>" % took)
        return tuple(outputs)

    return f
