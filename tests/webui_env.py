"""Helpers for tests that run the extension inside the A1111 1.10.1 stand-in (tests/a1111)."""
import os
import sys
from pathlib import Path

STANDIN_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "a1111")
if STANDIN_ROOT not in sys.path:
    sys.path.insert(0, STANDIN_ROOT)

import standin_app  # noqa: E402

EXTENSION = Path(__file__).resolve().parent.parent


def start_webui(tmp_path: Path, *flags: str):
    """A fresh stand-in WebUI under tmp_path (with extra WebUI `flags`) with the extension
    loaded; returns its checkpoint folder."""
    standin_app.reset(tmp_path, args=["--use-cpu", "all", "--no-half"] + list(flags))
    standin_app.load_extension(str(EXTENSION), strict=True)
    from modules import sd_models

    folder = Path(sd_models.model_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def register_settings():
    """Run the on_ui_settings callbacks (A1111 does it while it builds the page)."""
    from modules import script_callbacks

    script_callbacks.ui_settings_callback()


def allow_data_root(folder: Path):
    """List `folder` in Settings › BK-SDM as a server folder the page may read."""
    from modules import shared

    register_settings()
    assert shared.opts.set("bksdm_data_roots", str(folder))


def load(path: Path):
    """Load a checkpoint file the way choosing it in the dropdown does."""
    from modules import sd_models, shared

    sd_models.list_models()
    info = next(i for i in sd_models.checkpoints_list.values() if Path(i.filename) == path)
    shared.opts.set("sd_model_checkpoint", info.title)
    return sd_models.model_data.sd_model


def stop_jobs():
    """Kill the worker processes of jobs a test left running (they run in sessions of their
    own and would otherwise outlive the test)."""
    import signal

    from bksdm_ext.webui import jobs_service

    runner = jobs_service._runner
    for job in runner.jobs() if runner is not None else []:
        if job.state == "running" and job.pid:
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except OSError:
                pass
