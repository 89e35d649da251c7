"""Helpers for tests that run the extension inside the A1111 1.10.1 stand-in (tests/a1111)."""
import os
import sys
from contextlib import contextmanager
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


def start_webui_with_lora(tmp_path: Path, *flags: str):
    """As `start_webui`, with the stand-in's built-in Lora extension loaded first (as A1111
    loads built-in extensions) and the before-UI step that registers ``<lora:…>``; returns
    (checkpoint folder, Lora folder)."""
    standin_app.reset(tmp_path, args=["--use-cpu", "all", "--no-half"] + list(flags))
    standin_app.load_builtin_lora()
    standin_app.load_extension(str(EXTENSION), strict=True)
    standin_app.before_ui()
    from modules import sd_models, shared

    folder, loras = Path(sd_models.model_path), Path(shared.cmd_opts.lora_dir)
    folder.mkdir(parents=True, exist_ok=True)
    loras.mkdir(parents=True, exist_ok=True)
    return folder, loras


def register_settings():
    """Run the on_ui_settings callbacks (A1111 does it while it builds the page)."""
    from modules import script_callbacks

    script_callbacks.ui_settings_callback()


def allow_data_root(folder: Path):
    """List `folder` in Settings › BK-SDM as a server folder the page may read."""
    from modules import shared

    register_settings()
    assert shared.opts.set("bksdm_data_roots", str(folder))


def webui_with_data_roots(tmp_path: Path):
    """A pytest fixture body: a fresh stand-in WebUI whose tabs may read folders under
    `tmp_path` (the tests' data); jobs are stopped and the WebUI reset afterwards."""
    folder = start_webui(tmp_path / "webui")
    allow_data_root(tmp_path)  # the tests' data folders may be typed in
    yield folder
    stop_jobs()
    standin_app.reset(tmp_path / "after")


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


# What a `git clone` of the extension into extensions/ brings that the WebUI uses.
CLONED = ("bksdm_ext", "scripts", "install.py", "javascript", "style.css")


def install_copy(webui_dir: Path) -> Path:
    """The extension as a user installs it: a copy of the project under the WebUI's
    ``extensions/`` folder."""
    import shutil

    target = Path(webui_dir) / "extensions" / "sd-webui-bksdm"
    target.mkdir(parents=True)
    for name in CLONED:
        source = EXTENSION / name
        if source.is_dir():
            shutil.copytree(str(source), str(target / name),
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(str(source), str(target / name))
    return target


@contextmanager
def installed_webui(tmp_path: Path):
    """A stand-in WebUI running the extension as a real A1111 does: loaded from a copy
    under ``extensions/`` (so ``bksdm_ext`` is imported from there, not from this
    checkout, and is on sys.path only while the scripts load), from a working directory
    outside both, with no PYTHONPATH: a job's process finds ``bksdm_ext`` only if the job
    runner gives it the extension's folder.  Yields the checkpoint folder; tests import
    ``bksdm_ext`` inside their functions to get the copy.  Everything is put back after."""
    checkout = {name: module for name, module in sys.modules.items()
                if name == "bksdm_ext" or name.startswith("bksdm_ext.")}
    saved_path, saved_cwd = list(sys.path), os.getcwd()
    saved_pythonpath = os.environ.pop("PYTHONPATH", None)
    webui_dir = Path(tmp_path) / "webui"
    elsewhere = Path(tmp_path) / "cwd"
    elsewhere.mkdir(parents=True)
    try:
        for name in checkout:
            del sys.modules[name]
        sys.path[:] = [p for p in sys.path if p not in ("", ".") and
                       Path(p).resolve() != EXTENSION]
        os.chdir(str(elsewhere))
        standin_app.reset(webui_dir, args=["--use-cpu", "all", "--no-half"])
        copy = install_copy(webui_dir)
        standin_app.load_extension(str(copy), strict=True)
        import bksdm_ext

        assert Path(bksdm_ext.__file__).resolve().parent == copy / "bksdm_ext"
        from modules import sd_models

        folder = Path(sd_models.model_path)
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
    finally:
        if "bksdm_ext.webui.jobs_service" in sys.modules:
            stop_jobs()
            sys.modules["bksdm_ext.webui.jobs_service"]._runner = None  # ends its poll thread
        standin_app.reset(Path(tmp_path) / "after")
        for name in [n for n in sys.modules if n == "bksdm_ext" or n.startswith("bksdm_ext.")]:
            del sys.modules[name]
        sys.modules.update(checkout)
        sys.path[:] = saved_path
        os.chdir(saved_cwd)
        if saved_pythonpath is not None:
            os.environ["PYTHONPATH"] = saved_pythonpath
