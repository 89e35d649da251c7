"""Background work as files and processes: the job runner (queue, one job per device,
cancel, resume, re-attach after a restart; a lock file so that several processes share a
queue), the worker process that runs each job and records how it ended, the command line
a job runs (written so that no typed value is read as an option), the run folder every job
writes (events, STOP requests, atomic checkpoint folders) and the JSON-lines event file
that the WebUI and the CLI read.  It imports only `bksdm_ext.errors`: a job is
a subprocess of the `bksdm` command, so the runner needs nothing of the models or
trainers it starts.
"""
