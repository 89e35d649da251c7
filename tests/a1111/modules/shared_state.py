"""Stand-in for A1111 1.10.1 ``modules/shared_state.py``: ``State`` (``shared.state``), the job bookkeeping
that ``/internal/progress`` reads and long tasks write. No live previews, no server commands."""

import time


class State:
    skipped = interrupted = stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    job_timestamp = '0'
    sampling_step = 0
    sampling_steps = 0
    textinfo = None
    time_start = None
    server_start = None

    def __init__(self):
        self.server_start = self.time_start = time.time()

    def interrupt(self):
        self.interrupted = True

    def begin(self, job: str = "(unknown)"):
        """A job starts: counters back to zero, flags cleared, clock started (job_count -1 = not known yet)."""
        self.job, self.job_no, self.job_count = job, 0, -1
        self.sampling_step = self.sampling_steps = 0
        self.skipped = self.interrupted = self.stopping_generation = False
        self.textinfo = None
        self.time_start = now = time.time()
        self.job_timestamp = time.strftime("%Y%m%d%H%M%S", time.localtime(now))

    def end(self):
        self.job = ""
        self.job_count = 0
