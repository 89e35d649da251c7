"""Test helper for the A1111 1.10.1 stand-in (not an A1111 module); see README.md.

    import standin_app                                   # puts tests/a1111 on sys.path, initializes once
    standin_app.reset(tmp_path, args=["--use-cpu", "all", "--no-half"])   # fresh WebUI state under tmp_path
    standin_app.load_extension("/path/to/extension")     # runs its scripts/*.py as A1111 does
    app, url = standin_app.launch()                      # the page on 127.0.0.1
    standin_app.stop()
"""

import copy
import os
import shlex
import socket
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

STANDIN_ROOT = os.path.dirname(os.path.abspath(__file__))
if STANDIN_ROOT not in sys.path:
    sys.path.insert(0, STANDIN_ROOT)
BUILTIN_LORA = os.path.join(STANDIN_ROOT, "extensions-builtin", "Lora")

demo = None
app = None
url = None
script_errors = []  # (script path, exception) of each extension script that failed to load


def _parse_args(args, data_dir, models_dir=None):
    """Moves the data folders, re-creates the flag parser (its defaults depend on them) and parses ``args``."""
    import importlib

    from modules import cmd_args, paths_internal, shared, shared_cmd_options

    paths_internal.data_path = data_dir
    paths_internal.models_path = models_dir or os.path.join(data_dir, "models")
    paths_internal.extensions_dir = os.path.join(data_dir, "extensions")
    importlib.reload(cmd_args)
    shared_cmd_options.parser = shared.parser = cmd_args.parser
    return cmd_args.parser.parse_args(args)


def reset(data_dir=None, args=None):
    """WebUI start-up under ``data_dir`` with command-line ``args`` (default ``$COMMANDLINE_ARGS``, never
    sys.argv): fresh options (``data_dir/config.json``), state, device and dtypes, callbacks, extension list,
    checkpoint list, caches (hashes, processing's cond cache), ldm's U-Net module without the model hijack, progress
    queues and recorded run_pip calls; no model loaded. Returns ``modules.shared``."""
    stop()
    _unload_scripts()
    from modules import paths_internal

    data_dir = os.path.abspath(str(data_dir or paths_internal.data_path))
    args = shlex.split(os.environ.get("COMMANDLINE_ARGS", "")) if args is None else [str(a) for a in args]
    cmd_opts = _parse_args(args, data_dir)
    if cmd_opts.data_dir != data_dir or cmd_opts.models_dir:
        cmd_opts = _parse_args(args, cmd_opts.data_dir, cmd_opts.models_dir)

    import gradio as gr
    import launch
    import torch
    from modules import (call_queue, devices, extensions, extra_networks, hashes, launch_utils, options, progress, script_callbacks,
                         script_loading, scripts, sd_hijack_unet, sd_models, shared, shared_cmd_options, shared_options,
                         shared_state)

    shared_cmd_options.cmd_opts = shared.cmd_opts = launch_utils.args = launch.args = cmd_opts
    shared.config_filename = cmd_opts.ui_settings_file
    shared.demo, shared.tab_names = None, []
    launch_utils.run_pip_calls.clear()
    hashes._cache.clear()
    script_callbacks.clear_callbacks()
    scripts.scripts_txt2img.alwayson_scripts.clear()
    extra_networks.initialize()
    extensions.extensions.clear()
    extensions.extension_paths.clear()
    script_loading.loaded_scripts.clear()
    scripts.current_basedir = paths_internal.script_path
    script_errors.clear()
    progress.current_task = None
    for queue in (progress.pending_tasks, progress.finished_tasks, progress.recorded_results):
        queue.clear()
    sd_hijack_unet._undo()
    if "modules.processing" in sys.modules:  # a restart forgets the cond caches
        sys.modules["modules.processing"]._clear_cond_caches()
    if hasattr(shared, "GradioTemplateResponseOriginal"):  # undo ui_gradio_extensions.reload_javascript
        gr.routes.templates.TemplateResponse = shared.GradioTemplateResponseOriginal
    os.makedirs(paths_internal.extensions_dir, exist_ok=True)

    # what 1.10.1's shared_init.initialize() and initialize_util.configure_opts_onchange() do
    templates = {key: copy.copy(info) for key, info in shared_options.options_templates.items()}
    shared.opts = options.Options(templates, shared_options.restricted_opts)
    shared.opts.load(shared.config_filename)
    on_cpu = "all" in cmd_opts.use_cpu or "sd" in cmd_opts.use_cpu
    shared.device = devices.device = devices.cpu if on_cpu else devices.get_optimal_device()
    devices.dtype = devices.dtype_unet = torch.float32 if cmd_opts.no_half else torch.float16
    devices.dtype_vae = devices.dtype_inference = devices.dtype
    shared.weight_load_location = None if cmd_opts.lowram else "cpu"
    shared.state = shared_state.State()
    shared.opts.onchange("sd_model_checkpoint", call_queue.wrap_queued_call(lambda: sd_models.reload_model_weights()), call=False)

    sd_models.model_path = os.path.join(paths_internal.models_path, sd_models.model_dir)
    sd_models.model_data.__init__()
    sd_models.setup_model()
    sd_models.list_models()
    return shared


def _unload_scripts():
    """What a restart does to loaded scripts: their ``script_unloaded`` callbacks run (the built-in Lora
    extension takes its layer patches off) and its modules are forgotten, so the next load starts fresh."""
    if "modules.script_callbacks" in sys.modules:
        sys.modules["modules.script_callbacks"].script_unloaded_callback()
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(BUILTIN_LORA + os.sep):
            del sys.modules[name]


def load_builtin_lora():
    """(stand-in) loads the built-in Lora extension (``extensions-builtin/Lora``, see its docstrings) as A1111 does
    before the other extensions; call ``before_ui()`` once every extension is loaded."""
    return load_extension(BUILTIN_LORA, name="Lora", strict=True)


def before_ui():
    """What webui.py does once scripts are loaded: the ``before_ui`` callbacks (the Lora extension registers its
    ``lora`` extra network there)."""
    from modules import script_callbacks

    script_callbacks.before_ui_callback()


def load_extension(ext_dir, name=None, strict=False):
    """Registers ``ext_dir`` as an enabled extension and runs its ``scripts/*.py`` in name order as 1.10.1's
    ``scripts.load_scripts`` does: each as a module named after its file (not in sys.modules), with the extension
    folder first on a new ``sys.path`` list only while it runs (the old list object is put back) and
    ``scripts.basedir()`` = the folder. A failing script is reported and kept in ``script_errors``; the others still
    load (``strict=True``: re-raised). Returns the loaded modules."""
    from modules import errors, extensions, paths_internal, script_loading, scripts

    ext_dir = os.path.abspath(str(ext_dir))
    ext = extensions.extension_paths.get(ext_dir)
    if ext is None:
        ext = extensions.Extension(name or os.path.basename(ext_dir), ext_dir)
        extensions.extensions.append(ext)
        extensions.extension_paths[ext_dir] = ext

    loaded = []
    for script in ext.list_files("scripts", ".py"):
        saved = sys.path
        sys.path = [script.basedir] + saved
        scripts.current_basedir = script.basedir
        try:
            module = script_loading.load_module(script.path)
            scripts._register_scripts_from_module(module, script.path)
            loaded.append(module)
        except Exception as e:
            errors.report("Error loading script: " + script.filename, exc_info=True)
            script_errors.append((script.path, e))
            if strict:
                raise
        finally:
            sys.path = saved
            scripts.current_basedir = paths_internal.script_path
    return loaded


def install_extension(ext_dir):
    """Runs the extension's install.py (in-process); returns the ``launch.run_pip`` calls recorded so far."""
    from modules import launch_utils

    launch_utils.run_extension_installer(os.path.abspath(str(ext_dir)))
    return list(launch_utils.run_pip_calls)


def create_ui():
    """The page, shaped like 1.10.1's: extension JS/CSS injected, settings callbacks run, a quicksettings row
    (checkpoint dropdown ``#setting_sd_model_checkpoint`` + ``#refresh_sd_model_checkpoint``), then ``#tabs``: a
    placeholder ``txt2img`` tab (``#txt2img_prompt`` only) and ``TabItem(label, id=ifid, elem_id="tab_<ifid>")``
    per ``on_ui_tabs`` entry; the hidden ``#change_checkpoint`` button. ``blocks.standin_settings`` is the
    ``UiSettings``."""
    import gradio as gr

    from modules import gradio_extensons, script_callbacks, shared, ui_gradio_extensions, ui_settings  # noqa: F401

    ui_gradio_extensions.reload_javascript()
    settings = ui_settings.UiSettings()
    settings.register_settings()
    extension_tabs = script_callbacks.ui_tabs_callback()
    shared.tab_names = ["txt2img"] + [label for _, label, _ in extension_tabs]

    with gr.Blocks(analytics_enabled=False, title="Stable Diffusion") as blocks:
        settings.create_ui(None, gr.Label(visible=False))
        settings.add_quicksettings()
        with gr.Tabs(elem_id="tabs"):
            with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):
                gr.Textbox(label="Prompt (stand-in placeholder)", elem_id="txt2img_prompt")
            for interface, label, ifid in extension_tabs:
                with gr.TabItem(label, id=ifid, elem_id="tab_" + ifid):
                    interface.render()
        settings.add_functionality(blocks)

    blocks.standin_settings = settings
    return blocks


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(port=None, blocks=None):
    """Serves ``blocks`` (default: ``create_ui()``) on 127.0.0.1 as webui.py does: queue on, the WebUI and extension
    folders servable, ``/internal/progress`` added, app_started callbacks run. Returns ``(app, url)``."""
    global demo, app, url
    from modules import extensions, paths_internal, progress, script_callbacks, shared

    stop()
    demo = shared.demo = blocks if blocks is not None else create_ui()
    demo.queue(64)
    allowed = list(shared.cmd_opts.gradio_allowed_path) + [paths_internal.script_path] + [e.path for e in extensions.active()]
    app, local_url, _ = demo.launch(server_name="127.0.0.1", server_port=port or _free_port(),
                                    prevent_thread_lock=True, allowed_paths=allowed, quiet=True)
    progress.setup_progress_api(app)
    script_callbacks.app_started_callback(demo, app)
    url = local_url.rstrip("/")
    return app, url


def stop():
    """Closes the server ``launch`` started, if any."""
    global demo, app, url
    if demo is not None:
        try:
            demo.close()
        finally:
            demo = app = url = None


def _initialize_once():
    from modules import shared

    if shared.opts is None:
        reset()


_initialize_once()
