"""Stand-in for A1111 1.10.1 ``modules/shared_state.py``: ``State`` (``shared.state``), the job bookkeeping
that ``/internal/progress`` reads and long tasks write: ``begin``/``end`` around a job, ``nextjob`` after each
batch of images (``job_no`` + 1, ``sampling_step`` back to 0), the sampler writes ``sampling_steps`` and
``sampling_step``; ``interrupt``/``skip``/``stop_generating`` set the flags ``processing`` checks. No live
previews, no server commands, no logging."""

import time


class State:
    skipped = interrupted = stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    processing_has_refined_job_count = False
    job_timestamp = '0'
    sampling_step = 0
    sampling_steps = 0
    current_latent = None
    textinfo = None
    time_start = None
    server_start = None

    def __init__(self):
        self.server_start = self.time_start = time.time()

    def skip(self):
        self.skipped = True

    def interrupt(self):
        self.interrupted = True

    def stop_generating(self):
        self.stopping_generation = True

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def dict(self):
        keys = ("skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no",
                "sampling_step", "sampling_steps")
        return {key: getattr(self, key) for key in keys}

    def begin(self, job: str = "(unknown)"):
        """A job starts: counters back to zero, flags cleared, clock started (job_count -1 = not known yet)."""
        self.job, self.job_no, self.job_count = job, 0, -1
        self.sampling_step = self.sampling_steps = 0
        self.processing_has_refined_job_count = False
        self.skipped = self.interrupted = self.stopping_generation = False
        self.textinfo = self.current_latent = None
        self.time_start = now = time.time()
        self.job_timestamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now))

    def end(self):
        self.job = ""
        self.job_count = 0
