"""Checks of the A1111 1.10.1 stand-in in tests/a1111 (what extension tests rely on)."""

import os
import sys
import textwrap

import pytest

STANDIN_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "a1111")
if STANDIN_ROOT not in sys.path:
    sys.path.insert(0, STANDIN_ROOT)

torch = pytest.importorskip("torch")
pytest.importorskip("gradio")
pytest.importorskip("ldm.modules.diffusionmodules.openaimodel")
safetensors_torch = pytest.importorskip("safetensors.torch")

import standin_app  # noqa: E402

TINY_UNET = dict(
    image_size=32, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[4, 2, 1],
    num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, use_spatial_transformer=True,
    transformer_depth=1, context_dim=32, use_checkpoint=False, legacy=False,
)


def tiny_yaml(parameterization="eps", text_encoder="ldm.modules.encoders.modules.FrozenCLIPEmbedder"):
    """an LDM inference yaml in the standard format (v1-inference.yaml's layout) with a tiny U-Net"""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml({"model": {
        "target": "ldm.models.diffusion.ddpm.LatentDiffusion",
        "params": {
            "parameterization": parameterization, "linear_start": 0.00085, "linear_end": 0.0120, "timesteps": 1000,
            "conditioning_key": "crossattn", "scale_factor": 0.18215,
            "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": TINY_UNET},
            "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL"},
            "cond_stage_config": {"target": text_encoder},
        },
    }})


def tiny_unet_state_dict(seed):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(seed)
    unet = UNetModel(**TINY_UNET)
    return {"model.diffusion_model." + k: v.detach().clone() for k, v in unet.state_dict().items()}


def write_checkpoint(path, seed=0, drop=(), extra=None, yaml_text=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sd = tiny_unet_state_dict(seed)
    for k in drop:
        del sd[k]
    sd.update(extra or {})
    safetensors_torch.save_file(sd, path)
    if yaml_text is not None:
        with open(os.path.splitext(path)[0] + ".yaml", "w") as f:
            f.write(yaml_text)
    return sd


def write_extension(root):
    ext = root / "ext-probe"
    (ext / "scripts").mkdir(parents=True)
    (ext / "javascript").mkdir()
    (ext / "probe_helper").mkdir()
    (ext / "probe_helper" / "__init__.py").write_text("VALUE = 42\n")
    (ext / "javascript" / "probe.js").write_text("window.probeLoaded = true;\n")
    (ext / "style.css").write_text("#probe_marker { color: red; }\n")
    (ext / "scripts" / "probe.py").write_text(textwrap.dedent("""\
        import sys
        import gradio as gr
        from modules import script_callbacks, scripts
        import probe_helper

        PATH_AT_LOAD = list(sys.path)
        BASEDIR_AT_LOAD = scripts.basedir()
        LOADED_MODELS = []

        def on_ui_tabs():
            with gr.Blocks(analytics_enabled=False) as ui:
                gr.HTML("<b>probe</b>", elem_id="probe_marker")
            return [(ui, "Probe", "probe")]

        script_callbacks.on_ui_tabs(on_ui_tabs)
        script_callbacks.on_model_loaded(LOADED_MODELS.append)
        """))
    return ext


@pytest.fixture
def a1111(tmp_path):
    shared = standin_app.reset(tmp_path / "webui", args=["--use-cpu", "all", "--no-half", "--ckpt-dir", str(tmp_path / "ckpts")])
    yield shared
    standin_app.reset(tmp_path / "webui-after")


def test_list_models_scans_model_dir_and_ckpt_dir(a1111, tmp_path):
    from modules import sd_models

    a = str(tmp_path / "webui" / "models" / "Stable-diffusion" / "sub" / "a.safetensors")
    b = str(tmp_path / "ckpts" / "b.ckpt")
    os.makedirs(os.path.dirname(a))
    os.makedirs(os.path.dirname(b))
    for p in (a, b, str(tmp_path / "ckpts" / "x.vae.safetensors"), str(tmp_path / "ckpts" / "notes.txt")):
        with open(p, "wb") as f:
            f.write(b"{}")

    sd_models.list_models()

    assert sorted(sd_models.checkpoints_list) == ["b.ckpt", "sub/a.safetensors"]
    info = sd_models.checkpoints_list["sub/a.safetensors"]
    assert (info.filename, info.name_for_extra, info.model_name, info.shorthash) == (a, "a", "sub_a", None)
    assert a1111.list_checkpoint_tiles() == list(sd_models.checkpoints_list)

    # hashing renames the entry to "name [shorthash]", as in the real WebUI
    short = info.calculate_shorthash()
    assert sorted(sd_models.checkpoints_list) == ["b.ckpt", f"sub/a.safetensors [{short}]"]
    assert sd_models.checkpoint_aliases[short] is info


def test_load_model_builds_ldm_unet_from_yaml_next_to_checkpoint(a1111, tmp_path):
    from ldm.modules.diffusionmodules.openaimodel import UNetModel
    from modules import sd_models, script_callbacks, sd_models_config

    dropped = "model.diffusion_model.time_embed.0.weight"  # a Linear weight missing from the file
    path = str(tmp_path / "webui" / "models" / "Stable-diffusion" / "tiny.safetensors")
    real_parts = {  # what real checkpoints hold for CLIP and the VAE: other names and shapes than the stand-in's
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": torch.ones(5, 7),
        "first_stage_model.decoder.conv_out.weight": torch.ones(3, 8, 3, 3)}
    sd = write_checkpoint(path, seed=1, drop=[dropped], extra={"cond_stage_model.unused": torch.ones(3), "junk": torch.zeros(1), **real_parts}, yaml_text=tiny_yaml("v"))
    sd_models.list_models()

    seen = []
    script_callbacks.on_model_loaded(seen.append)
    model = sd_models.load_model()

    assert seen == [model]
    assert a1111.sd_model is model and sd_models.model_data.sd_model is model
    assert model.used_config == os.path.splitext(path)[0] + ".yaml"
    assert isinstance(model.model.diffusion_model, UNetModel)
    assert (model.parameterization, model.is_sd1, model.is_sd2) == ("v", True, False)
    assert model.sd_model_checkpoint == path
    assert model.sd_checkpoint_info.title == f"tiny.safetensors [{model.sd_model_hash}]"
    assert a1111.opts.sd_model_checkpoint == model.sd_checkpoint_info.title

    weights = model.state_dict()
    assert all(k.startswith(("model.diffusion_model.", "betas", "alphas_cumprod")) for k in weights)
    assert torch.equal(weights["model.diffusion_model.out.2.weight"], sd["model.diffusion_model.out.2.weight"])
    assert not weights[dropped].any()  # missing Linear/Conv weights come out as zeros (A1111 meta-init)
    assert weights["model.diffusion_model.input_blocks.0.0.weight"].dtype == torch.float32  # --no-half

    with torch.no_grad():
        out = model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 3, 32))
        text = model.get_learned_conditioning(["a cat", "a dog, at night"])
        again = model.get_learned_conditioning(["a dog, at night"])
    assert out.shape == (1, 4, 8, 8)
    # the stand-in text encoder (context_dim from the yaml) and VAE: fixed weights, outside state_dict()
    assert text.shape == (2, 77, 32) and torch.equal(text[1], again[0]) and not torch.equal(text[0], text[1])
    assert model.decode_first_stage(torch.randn(2, 4, 8, 8)).shape == (2, 3, 64, 64)
    assert isinstance(model.cond_stage_model, torch.nn.Module) and not hasattr(model.cond_stage_model, "model")
    assert not any(k.startswith(("cond_stage_model.", "first_stage_model.")) for k in weights)

    # without a yaml next to it, the config is guessed from the keys (SD1 -> configs/v1-inference.yaml)
    assert sd_models_config.find_checkpoint_config(sd, None) == sd_models_config.config_default
    sd2 = {"cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(6, 1024), **sd}
    assert sd_models_config.guess_model_config_from_state_dict(sd2, "") == sd_models_config.config_sd2
    assert os.path.isfile(sd_models_config.config_default) and os.path.isfile(sd_models_config.config_sd2v)


def test_checkpoint_setting_change_reloads_and_half_precision(tmp_path):
    shared = standin_app.reset(tmp_path / "webui", args=["--use-cpu", "all"])  # no --no-half: fp16 weights as in A1111
    try:
        from modules import sd_models, script_callbacks

        base = tmp_path / "webui" / "models" / "Stable-diffusion"
        write_checkpoint(str(base / "one.safetensors"), seed=1, yaml_text=tiny_yaml())
        second = write_checkpoint(str(base / "two.safetensors"), seed=2, yaml_text=tiny_yaml(text_encoder="ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"))
        sd_models.list_models()

        seen = []
        script_callbacks.on_model_loaded(seen.append)
        first = sd_models.load_model(sd_models.checkpoints_list["one.safetensors"])
        assert first.model.diffusion_model.out[2].weight.dtype == torch.float16
        assert first.alphas_cumprod.dtype == torch.float32

        # what the quicksettings dropdown does: opts.set -> onchange -> reload_model_weights()
        assert shared.opts.set("sd_model_checkpoint", "two.safetensors")
        model = shared.sd_model
        assert model.sd_checkpoint_info.name == "two.safetensors" and len(seen) == 2 and seen[-1] is model
        assert (first.is_sd1, model.is_sd2) == (True, True)  # SD2 = OpenCLIP text encoder, as 1.10.1's set_model_type
        assert isinstance(model.cond_stage_model.model, torch.nn.Module)  # what set_model_type looks for
        assert model.cond_stage_model.model.token_embedding.dtype == torch.float16  # cast with the model
        assert torch.equal(model.state_dict()["model.diffusion_model.out.2.weight"].float(), second["model.diffusion_model.out.2.weight"].half().float())
    finally:
        standin_app.reset(tmp_path / "webui-after")


def test_extension_scripts_see_their_folder_on_sys_path_only_while_loading(a1111, tmp_path):
    from modules import scripts, script_callbacks

    ext = write_extension(tmp_path)
    before = list(sys.path)
    path_object = sys.path

    (module,) = standin_app.load_extension(str(ext), strict=True)

    assert module.__name__ == "probe.py" and "probe.py" not in sys.modules
    assert module.PATH_AT_LOAD[0] == str(ext) and module.BASEDIR_AT_LOAD == str(ext)
    assert sys.path is path_object and sys.path == before and str(ext) not in sys.path
    assert scripts.basedir() == STANDIN_ROOT
    assert [c.name for c in script_callbacks.callback_map["callbacks_ui_tabs"]] == ["ext-probe/probe.py/ui_tabs"]


@pytest.mark.slow
def test_launch_serves_page_with_dropdown_extension_js_and_progress_api(a1111, tmp_path):
    httpx = pytest.importorskip("httpx")
    from modules import sd_models, progress

    write_checkpoint(str(tmp_path / "ckpts" / "tiny.safetensors"), yaml_text=tiny_yaml())
    sd_models.list_models()
    ext = write_extension(tmp_path)
    standin_app.load_extension(str(ext), strict=True)

    app, url = standin_app.launch()
    try:
        assert url.startswith("http://127.0.0.1:")
        page = httpx.get(url + "/", timeout=30).text
        for needle in ('"webui_tooltip":"Stable Diffusion checkpoint: refresh"', '"gradio-dropdown"', '"setting_sd_model_checkpoint"', '"refresh_sd_model_checkpoint"', '"tab_probe"', '"probe_marker"', '"tiny.safetensors"', '"settings_json"'):
            assert needle in page
        js_src = next(part.split('"')[0] for part in page.split('src="')[1:] if "probe.js" in part.split('"')[0])
        assert httpx.get(url + "/" + js_src, timeout=30).text == "window.probeLoaded = true;\n"
        css_href = next(part.split('"')[0] for part in page.split('href="')[1:] if "ext-probe/style.css" in part.split('"')[0])
        assert "#probe_marker" in httpx.get(url + "/" + css_href, timeout=30).text
        assert 'src="file=' in page and "script.js" in page
        # A1111's own page scripts come first: script.js, then javascript/*.js (progressbar.js, ui.js)
        scripts = [part.split('"')[0] for part in page.split('src="')[1:] if part.split('"')[0].startswith("file=")]
        assert [os.path.basename(s.split("?")[0]) for s in scripts] == ["script.js", "progressbar.js", "ui.js", "probe.js"]
        for name, needle in (("progressbar.js", "function requestProgress(id_task, progressbarContainer, gallery, atEnd, onProgress, inactivityTimeout = 40)"),
                             ("progressbar.js", "function randomId()"), ("ui.js", "function selectCheckpoint(name)"),
                             ("script.js", "function get_uiCurrentTabContent()"), ("script.js", "function onUiTabChange(callback)")):
            src = next(s for s in scripts if os.path.basename(s.split("?")[0]) == name)
            assert needle in httpx.get(url + "/" + src, timeout=30).text
        assert '"change_checkpoint"' in page and '"Change checkpoint"' in page

        res = httpx.post(url + "/internal/progress", json={"id_task": "task(nothing)"}, timeout=30).json()
        assert (res["active"], res["queued"], res["completed"], res["textinfo"]) == (False, False, False, "Waiting...")

        # progress is computed from shared.state, as in A1111
        task = progress.create_task_id("probe")
        progress.add_task_to_queue(task)
        res = httpx.post(url + "/internal/progress", json={"id_task": task}, timeout=30).json()
        assert res["queued"] and res["textinfo"] == "In queue: 1/1"
        state = a1111.state
        state.begin(job=task)
        progress.start_task(task)
        state.job_count, state.job_no, state.sampling_steps, state.sampling_step = 2, 1, 10, 5
        state.textinfo = "working"
        res = httpx.post(url + "/internal/progress", json={"id_task": task}, timeout=30).json()
        assert res["active"] and res["progress"] == pytest.approx(0.75) and res["textinfo"] == "working" and res["eta"] is not None
        progress.finish_task(task)
        state.end()
        assert httpx.post(url + "/internal/progress", json={"id_task": task}, timeout=30).json()["completed"]
    finally:
        standin_app.stop()

    # the refresh button re-lists checkpoints and updates the dropdown choices
    write_checkpoint(str(tmp_path / "ckpts" / "later.safetensors"), yaml_text=tiny_yaml())
    blocks = standin_app.create_ui()
    dropdown = blocks.standin_settings.component_dict["sd_model_checkpoint"]
    refresh = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "refresh_sd_model_checkpoint")
    dep_index = next(i for i, d in enumerate(blocks.dependencies) if refresh._id in d["targets"] or [refresh._id, "click"] in d["targets"])
    update = blocks.fns[dep_index].fn()
    assert "later.safetensors" in update["choices"] and "later.safetensors" in dropdown.choices


def test_launch_module_records_pip_calls(a1111):
    import launch

    assert launch.is_installed("torch") and not launch.is_installed("surely_not_installed_pkg_xyz")
    assert launch.run_pip("install foo==1.0", "foo") == ""
    from modules import launch_utils
    assert launch_utils.run_pip_calls == [{"command": "install foo==1.0", "desc": "foo", "live": launch_utils.default_command_live}]


def _handler(blocks, elem_id):
    """the python function behind the click of the button with ``elem_id``"""
    button = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == elem_id)
    index = next(i for i, d in enumerate(blocks.dependencies) if [button._id, "click"] in d["targets"] or button._id in d["targets"])
    return blocks.fns[index].fn, blocks.dependencies[index]


def test_change_checkpoint_button_loads_the_named_checkpoint(a1111, tmp_path):
    from modules import sd_models

    write_checkpoint(str(tmp_path / "ckpts" / "one.safetensors"), seed=1, yaml_text=tiny_yaml())
    write_checkpoint(str(tmp_path / "ckpts" / "two.safetensors"), seed=2, yaml_text=tiny_yaml())
    sd_models.list_models()
    sd_models.load_model(sd_models.checkpoints_list["one.safetensors"])

    blocks = standin_app.create_ui()
    fn, dependency = _handler(blocks, "change_checkpoint")
    assert "desiredCheckpointName" in dependency["js"]  # the page passes selectCheckpoint's name
    update, settings_json = fn("two.safetensors", None)
    model = sd_models.model_data.sd_model
    assert model.sd_checkpoint_info.name == "two.safetensors" and update["value"] == model.sd_checkpoint_info.title
    assert update["value"] in update["choices"] and '"sd_model_checkpoint": "two.safetensors [' in settings_json


def test_gpu_call_wrapper_tracks_the_task_reports_errors_and_adds_the_time(a1111):
    from modules import call_queue, progress

    seen = []

    def job(id_task, fail):
        seen.append((a1111.state.job, progress.current_task))
        if fail:
            raise ValueError("bad <input>")
        return ["title", "<p>done</p>"]

    wrapped = call_queue.wrap_gradio_gpu_call(job, extra_outputs=["", None])
    title, html = wrapped("task(abc)", False)
    assert seen == [("task(abc)", "task(abc)")] and title == "title"
    assert html.startswith("<p>done</p>") and "Time taken" in html
    assert "task(abc)" in progress.finished_tasks and progress.current_task is None and a1111.state.job == ""

    outputs = wrapped("task(def)", True)
    assert outputs[:2] == ("", None) and "<div class='error'>ValueError: bad &lt;input&gt;</div>" in outputs[2]
    assert "Time taken" in outputs[2] and "task(def)" in progress.finished_tasks
    assert call_queue.wrap_gradio_gpu_call(job)("not a task", True)[:2] == (None, "")


# -- txt2img: modules.processing ------------------------------------------------------------------------------------


class Probe:
    """Counts what the extension's Latency panel times: U-Net and text-encoder forward calls (hooks) and
    ``first_stage_model.decode`` (the attribute replaced by a wrapper)."""

    def __init__(self, model, state, on_unet=None):
        self.unet, self.text, self.decode = [], [], []
        self.model, self.state, self.on_unet = model, state, on_unet
        self.handles = [model.model.diffusion_model.register_forward_hook(self._unet),
                        model.cond_stage_model.register_forward_hook(self._text)]
        self.original_decode = model.first_stage_model.decode
        model.first_stage_model.decode = self._decode

    def _unet(self, module, args, output):
        x, t = args[:2]
        self.unet.append((tuple(x.shape), self.state.sampling_step, self.state.sampling_steps))
        if self.on_unet is not None:
            self.on_unet(len(self.unet))

    def _text(self, module, args, output):
        self.text.append((list(args[0]), tuple(output.shape)))

    def _decode(self, z):
        self.decode.append(tuple(z.shape))
        return self.original_decode(z)

    def close(self):
        for handle in self.handles:
            handle.remove()
        self.model.first_stage_model.decode = self.original_decode


def txt2img(**kwargs):
    """A txt2img job the way the Latency panel makes one."""
    from modules import processing, shared

    args = dict(sd_model=shared.sd_model, prompt="a red bicycle", negative_prompt="", seed=123, batch_size=1, n_iter=1,
                steps=4, cfg_scale=7.0, width=64, height=64, do_not_save_samples=True, do_not_save_grid=True,
                sampler_name="DPM++ 2M", scheduler="Karras")
    args.update(kwargs)
    p = processing.StableDiffusionProcessingTxt2Img(**args)
    try:
        return p, processing.process_images(p)
    finally:
        p.close()


@pytest.fixture
def tiny_model(a1111, tmp_path):
    from modules import sd_models

    write_checkpoint(str(tmp_path / "ckpts" / "tiny.safetensors"), seed=3, yaml_text=tiny_yaml())
    sd_models.list_models()
    return sd_models.load_model()


def test_processing_dataclasses_have_the_fields_of_1_10_1():
    from dataclasses import fields

    from modules import processing

    names = [f.name for f in fields(processing.StableDiffusionProcessingTxt2Img)]
    assert names[:23] == ["sd_model", "outpath_samples", "outpath_grids", "prompt", "prompt_for_display", "negative_prompt",
                          "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
                          "seed_enable_extras", "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale",
                          "width", "height", "restore_faces", "tiling"]
    assert {"do_not_save_samples", "do_not_save_grid", "override_settings", "enable_hr", "hr_scheduler", "force_task_id"} <= set(names)
    assert len(names) == 102 and "token_merging_ratio" not in names  # no annotation there in 1.10.1 either
    defaults = {f.name: f.default for f in fields(processing.StableDiffusionProcessingTxt2Img) if f.init}
    assert (defaults["steps"], defaults["cfg_scale"], defaults["width"], defaults["seed"], defaults["scheduler"]) == (50, 7.0, 512, -1, None)
    assert defaults["denoising_strength"] == 0.75  # txt2img's own default overrides the base class's None
    assert {f.name for f in fields(processing.StableDiffusionProcessing)} < set(names)


@pytest.mark.parametrize("parameterization,text_encoder", [
    ("eps", "ldm.modules.encoders.modules.FrozenCLIPEmbedder"),
    ("v", "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder"),
])
@pytest.mark.slow
def test_process_images_runs_the_text_encoder_unet_and_vae_like_a1111(a1111, tmp_path, parameterization, text_encoder):
    from PIL import Image
    from modules import devices, sd_models

    write_checkpoint(str(tmp_path / "ckpts" / "tiny.safetensors"), seed=3, yaml_text=tiny_yaml(parameterization, text_encoder))
    sd_models.list_models()
    model = sd_models.load_model()
    assert model.is_sd2 == (parameterization == "v")
    assert torch.device(devices.device) == torch.device("cpu") and devices.dtype == torch.float32  # --use-cpu all --no-half

    state = a1111.state
    state.begin(job="task(probe)")
    probe = Probe(model, state)
    try:
        p, processed = txt2img(sd_model=None)  # the passed model is ignored: p.sd_model is always shared.sd_model
    finally:
        probe.close()
    assert p.sd_model is model

    # negative prompt then prompt, one text-encoder call each; 4 steps = 4 U-Net calls on the CFG batch; one decode
    assert probe.text == [([""], (1, 77, 32)), (["a red bicycle"], (1, 77, 32))]
    assert [shape for shape, _, _ in probe.unet] == [(2, 4, 8, 8)] * 4
    assert probe.decode == [(1, 4, 8, 8)]
    # shared.state as 1.10.1 leaves it: the sampler's step counters (0-based, written after each step) and one job done
    assert [(step, steps) for _, step, steps in probe.unet] == [(0, 4), (0, 4), (1, 4), (2, 4)]
    assert (state.sampling_steps, state.sampling_step, state.job_no, state.job_count, state.job) == (4, 0, 1, 1, "task(probe)")
    assert model.first_stage_model.decode == probe.original_decode  # the wrapper is gone again

    image, = processed.images
    assert isinstance(image, Image.Image) and image.size == (64, 64) and image.mode == "RGB"
    assert processed.seed == 123 and processed.info == image.info["parameters"] == processed.infotexts[0]
    assert processed.info.startswith("a red bicycle\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 123, Size: 64x64, Model hash: ")
    assert processed.info.endswith("Model: tiny, Version: v1.10.1")
    assert len(set(image.getdata())) > 1  # a picture, not a flat colour

    # the same job again: the same image, and the text encoder is not run (1.10.1's persistent cond cache)
    probe = Probe(model, state)
    try:
        _, again = txt2img()
        a1111.opts.set("persistent_cond_cache", False)
        _, third = txt2img()  # still cached from before; close() now forgets the conds
        _, fourth = txt2img()
    finally:
        probe.close()
    assert again.images[0].tobytes() == image.tobytes() == fourth.images[0].tobytes()
    assert [texts for texts, _ in probe.text] == [[""], ["a red bicycle"]] and len(probe.unet) == 12


def test_batches_and_iterations_update_the_state_per_iteration(tiny_model, a1111):
    state = a1111.state
    state.begin(job="task(batch)")
    probe = Probe(tiny_model, state)
    try:
        p, processed = txt2img(batch_size=2, n_iter=2, steps=2, seed=7, prompt="two cats", negative_prompt="blurry",
                               sampler_name="Euler", scheduler=None)
    finally:
        probe.close()
    assert [shape for shape, _, _ in probe.unet] == [(4, 4, 8, 8)] * 4  # 2 iterations x 2 steps, prompt + negative rows
    assert probe.text == [(["blurry"], (1, 77, 32)), (["two cats"], (1, 77, 32))]  # once per distinct text, then cached
    assert probe.decode == [(1, 4, 8, 8)] * 4  # 1.10.1 decodes image by image
    assert (state.job_no, state.job_count, state.job) == (2, 2, "Batch 2 out of 2")
    assert p.scheduler == "Automatic"  # None autocorrected, as 1.10.1 does
    assert len(processed.images) == 4 and processed.all_seeds == [7, 8, 9, 10]
    assert ["Seed: %d," % seed in text for seed, text in zip(processed.all_seeds, processed.infotexts)] == [True] * 4
    assert "Negative prompt: blurry\nSteps: 2, Sampler: Euler, Schedule type: Automatic, CFG scale: 7.0" in processed.info
    assert processed.images[0].tobytes() != processed.images[1].tobytes()  # other seed, other noise


def test_interrupt_stops_sampling_and_later_iterations(tiny_model, a1111):
    state = a1111.state
    state.begin(job="task(stop)")

    def interrupt_after_the_second(calls):
        if calls == 2:
            state.interrupt()

    probe = Probe(tiny_model, state, on_unet=interrupt_after_the_second)
    try:
        _, processed = txt2img(steps=10, n_iter=3, prompt="a slow job")
    finally:
        probe.close()
    # the step after the interrupt never reaches the U-Net; the latent so far is still decoded (as in 1.10.1)
    assert len(probe.unet) == 2 and probe.decode == [(1, 4, 8, 8)] and len(processed.images) == 1
    assert (state.job_no, state.sampling_steps) == (1, 10)

    probe = Probe(tiny_model, state)  # interrupted before it starts: nothing runs, a Processed all the same
    try:
        _, processed = txt2img(prompt="never made")
    finally:
        probe.close()
    assert (probe.unet, probe.text, probe.decode, processed.images) == ([], [], [], [])
    assert processed.info.startswith("never made\nSteps: 4")

    state.begin(job="task(skip)")  # skip: this iteration stops, the next one runs
    probe = Probe(tiny_model, state, on_unet=lambda calls: state.skip() if calls == 1 else None)
    try:
        _, processed = txt2img(steps=3, n_iter=2, prompt="skip one")
    finally:
        probe.close()
    assert len(probe.unet) == 1 + 3 and len(probe.decode) == 2 and len(processed.images) == 2


def test_sampler_names_as_1_10_1_handles_them(tiny_model, a1111, caplog):
    from modules import sd_samplers

    with pytest.raises(AssertionError, match="bad sampler name: Nope"):
        sd_samplers.create_sampler("Nope", tiny_model)
    with pytest.raises(NotImplementedError, match="stand-in"):
        sd_samplers.create_sampler("DDIM", tiny_model)  # a real 1.10.1 sampler the stand-in does not have
    assert sd_samplers.get_sampler_and_scheduler("DPM++ 2M Karras", None, convert_automatic=False) == ("DPM++ 2M", "Karras")
    assert sd_samplers.get_sampler_and_scheduler("DPM++ 2M Karras", None) == ("DPM++ 2M", "Automatic")  # its default
    assert sd_samplers.get_sampler_and_scheduler("Euler a", "Karras") == ("Euler a", "Karras")

    # process_images autocorrects an unknown sampler to the first one, with a warning, instead of failing
    with caplog.at_level("WARNING"):
        p, processed = txt2img(sampler_name="Nope", scheduler="Karras", steps=2)
    assert (p.sampler_name, p.scheduler) == ("DPM++ 2M", "Karras") and len(processed.images) == 1
    assert 'Sampler Scheduler autocorrection: "Nope" -> "DPM++ 2M"' in caplog.text
    # 1.6-style "DPM++ 2M Karras" as the sampler name works too: split into sampler and scheduler
    p, _ = txt2img(sampler_name="DPM++ 2M Karras", scheduler=None, steps=2)
    assert (p.sampler_name, p.scheduler) == ("DPM++ 2M", "Karras")


def test_override_settings_apply_during_the_job_only(tiny_model, a1111):
    a1111.opts.set("batch_cond_uncond", True)  # a stored setting (in config.json)
    seen = []
    probe = Probe(tiny_model, a1111.state, on_unet=lambda calls: seen.append(a1111.opts.batch_cond_uncond))
    try:
        txt2img(steps=2, batch_size=2, override_settings={"batch_cond_uncond": False})
    finally:
        probe.close()
    # without batch_cond_uncond the prompt rows and the negative rows go through the U-Net separately
    assert [shape for shape, _, _ in probe.unet] == [(2, 4, 8, 8)] * 4 and seen == [False] * 4
    assert a1111.opts.batch_cond_uncond is True

    # as in 1.10.1, only settings stored in opts.data are put back: one never set (no config.json entry) keeps the
    # override
    assert "s_min_uncond" not in a1111.opts.data
    txt2img(steps=1, override_settings={"s_min_uncond": 2.0})
    assert a1111.opts.s_min_uncond == 2.0


@pytest.mark.parametrize("name", ["sample_euler", "sample_dpmpp_2m"])
def test_sampling_loops_reach_what_the_denoiser_predicts(name):
    from modules import sd_samplers_kdiffusion

    target = torch.randn(2, 4, 8, 8)
    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.5, 0.03, 0.0])
    steps = []
    x = sd_samplers_kdiffusion.__dict__[name](lambda x, sigma: target, torch.randn(2, 4, 8, 8) * 14.6, sigmas,
                                              callback=lambda d: steps.append(d["i"]))
    assert torch.allclose(x, target, atol=1e-5) and steps == [0, 1, 2, 3, 4]


def test_sides_that_are_multiples_of_8_work_once_a_model_is_loaded(tiny_model, a1111, tmp_path):
    import ldm.modules.diffusionmodules.openaimodel as openaimodel

    probe = Probe(tiny_model, a1111.state)
    try:
        _, processed = txt2img(width=32, height=40, steps=2)  # latents 4x5: the skip connections are resized
    finally:
        probe.close()
    assert processed.images[0].size == (32, 40) and probe.decode == [(1, 4, 5, 4)]
    standin_app.reset(tmp_path / "restarted")  # a fresh WebUI: ldm's U-Net module sees plain torch again
    assert openaimodel.th is torch
