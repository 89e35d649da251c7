"""sd-webui-controlnet's residual path on BK-SDM students, against a stand-in of its hook.

The stand-in (tests/controlnet_standin) walks the U-Net as the extension's ``hook.py`` does:
13 residuals for the teacher's 12 skip connections and its middle, paired with the U-Net's
skip features from the end.  Each student's result is compared, block by block, with a
reference written here by hand from docs/facts.md §3 (which teacher input block each student
input block came from), not from the code under test.
"""
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from bksdm_ext.errors import BadInput
from bksdm_ext.model.convert import convert_checkpoint
from test_convert import ldm_from_yaml, load_file, unet_part
from tiny import TINY, write_teacher

STANDIN = Path(__file__).resolve().parents[1] / "controlnet_standin" / "sd-webui-controlnet"
A1111_STANDIN = Path(__file__).resolve().parents[1] / "a1111"
CUSTOM_UNITS = "down.1.1,up.1.1,down.3.0,up.3.2,mid"

# docs/facts.md §3: student input block i <- teacher input block ORIGINS[i]; the custom student
# keeps down layers 0 and 1 of stages 0 and 2, layer 0 of stage 1, layer 1 of stage 3.
ORIGINS = {
    "small": [0, 1, 3, 4, 6, 7, 9, 10],
    "base": [0, 1, 3, 4, 6, 7, 9, 10],
    "tiny": [0, 1, 3, 4, 6, 7],
    "custom": [0, 1, 2, 3, 4, 6, 7, 8, 9, 11],
}
# Whether the teacher's middle residual is added to the student's bottom feature (Tiny has no
# feature at the middle's resolution: its innermost stage is gone).
MIDDLE = {"small": True, "base": True, "tiny": False, "custom": True}
# Per teacher stage: the student input block whose output is the stage's output (a T2I-Adapter
# adds there), None for a removed stage.
STAGE_OUTPUT = {
    "small": [1, 3, 5, 7],
    "base": [1, 3, 5, 7],
    "tiny": [1, 3, 5, None],
    "custom": [2, 4, 7, 9],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnet")
    teacher = write_teacher(folder, TINY["sd-v1"])
    paths = {"teacher": teacher}
    for name in ("small", "base", "tiny"):
        paths[name] = folder / ("%s.safetensors" % name)
        convert_checkpoint(teacher, paths[name], name, dtype="fp32")
    paths["custom"] = folder / "custom.safetensors"
    convert_checkpoint(teacher, paths["custom"], "teacher", dtype="fp32", remove=CUSTOM_UNITS)
    return paths


def load_unet(path: Path) -> torch.nn.Module:
    unet = ldm_from_yaml(path.with_suffix(".yaml"))
    unet.load_state_dict(unet_part(load_file(path)[0]), strict=True)
    return unet


def import_extension(folder: Path):
    """Import the stand-in's hook.py and enums.py as A1111 does while it loads the extension."""
    for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
        del sys.modules[name]
    sys.path.insert(0, str(folder))
    try:
        from scripts import enums, hook
    finally:
        sys.path.remove(str(folder))
    return hook, enums


@pytest.fixture
def cn():
    """(hook module, enums module, adapt) with the A1111 and ControlNet stand-ins importable."""
    saved = {n: m for n, m in sys.modules.items() if n == "scripts" or n.startswith("scripts.")}
    sys.path.insert(0, str(A1111_STANDIN))
    import standin_app  # noqa: F401  (the A1111 stand-in's modules.*)
    from bksdm_ext.webui import controlnet

    hook, enums = import_extension(STANDIN)
    yield SimpleNamespace(hook=hook, enums=enums, adapt=controlnet.adapt)
    for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
        del sys.modules[name]
    sys.modules.update(saved)
    sys.path.remove(str(A1111_STANDIN))


class FixedControl(torch.nn.Module):
    """A control model whose outputs are given (what a ControlNet or T2I-Adapter returns)."""

    def __init__(self, outputs, in_channels=4):
        super().__init__()
        self.outputs = outputs
        self.control_model = SimpleNamespace(input_blocks=[[torch.nn.Conv2d(in_channels, 1, 1)]])

    def forward(self, x=None, hint=None, timesteps=None, context=None, **kwargs):
        return list(self.outputs)


def unit(cn, outputs, kind="ControlNet", weight=1.0, soft=False):
    return cn.hook.ControlParams(
        control_model=FixedControl(outputs), preprocessor={"name": "none"},
        hint_cond=torch.zeros(1, 3, 128, 128), weight=weight, guidance_stopped=False,
        start_guidance_percent=0.0, stop_guidance_percent=1.0, advanced_weighting=None,
        control_model_type=getattr(cn.enums.ControlModelType, kind), hr_hint_cond=None,
        global_average_pooling=False, soft_injection=soft, cfg_injection=False)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 16, 16, generator=g)
    return x, torch.tensor([10, 700]), torch.randn(2, 5, TINY["sd-v1"].context_dim, generator=g)


def teacher_shapes(files):
    """The teacher's 12 skip features and middle output (what its residuals are shaped as)."""
    unet = load_unet(files["teacher"])
    shapes, hooks = [], [b.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
                         for b in list(unet.input_blocks) + [unet.middle_block]]
    with torch.no_grad():
        unet(*inputs()[:1], timesteps=inputs()[1], context=inputs()[2])
    for h in hooks:
        h.remove()
    return shapes


def random_residuals(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [0.5 * torch.randn(s, generator=g) for s in shapes]


def adapter_features(files, seed=5):
    """A T2I-Adapter's 4 outputs: one per teacher stage, shaped as the stage's output."""
    shapes = teacher_shapes(files)
    return random_residuals([shapes[k] for k in (2, 5, 8, 11)], seed)


class BlockOutputs:
    """Every input, middle and output block's output during a call, in order."""

    def __init__(self, unet):
        self.values = []
        blocks = list(unet.input_blocks) + [unet.middle_block] + list(unet.output_blocks)
        self.handles = [b.register_forward_hook(lambda m, i, o: self.values.append(o)) for b in blocks]

    def take(self):
        values, self.values = self.values, []
        return values


def reference(unet, x, t, context, name, residuals=None, adapter=None):
    """The student's forward with each addition put where the maps above say, by hand."""
    from ldm.modules.diffusionmodules.util import timestep_embedding

    origins = ORIGINS[name]
    emb = unet.time_embed(timestep_embedding(t, unet.model_channels, repeat_only=False))
    h, hs = x, []
    for i, block in enumerate(unet.input_blocks):
        h = block(h, emb, context)
        if adapter is not None and i in STAGE_OUTPUT[name]:
            h = h + adapter[STAGE_OUTPUT[name].index(i)]
        hs.append(h)
    h = unet.middle_block(h, emb, context)
    if residuals is not None and MIDDLE[name]:
        h = h + residuals[12]
    for block in unet.output_blocks:
        skip = hs.pop()
        if residuals is not None:
            skip = skip + residuals[origins[len(hs)]]
        h = block(torch.cat([h, skip], dim=1), emb, context)
    return unet.out(h)


def run_hooked(cn, path, units, checkpoint=None):
    """The student's output and block outputs with the stand-in hook (and BK-SDM) applied."""
    unet = load_unet(path)
    hook = cn.hook.UnetHook()
    hook.hook(model=unet, sd_ldm=None, control_params=units, process=None)
    cn.adapt(unet, checkpoint or SimpleNamespace(filename=str(path)))
    taps = BlockOutputs(unet)
    x, t, context = inputs()
    with torch.no_grad():
        out = unet(x, timesteps=t, context=context)
    return unet, out, taps.take()


def run_reference(unet, name, residuals=None, adapter=None):
    unet.forward = unet._original_forward
    taps = BlockOutputs(unet)
    x, t, context = inputs()
    with torch.no_grad():
        out = reference(unet, x, t, context, name, residuals, adapter)
    return out, taps.take()


def assert_same_blocks(got, expected):
    (out, blocks), (ref_out, ref_blocks) = got, expected
    assert len(blocks) == len(ref_blocks)
    for index, (a, b) in enumerate(zip(blocks, ref_blocks)):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5), "block %d" % index
    assert torch.allclose(out, ref_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["small", "base", "tiny"])
def test_the_stand_in_walk_fails_on_a_student_left_alone(cn, files, name):
    """Today's behaviour, as in the real A1111 (docs/facts.md §12): the pairs drift."""
    unet = load_unet(files[name])
    residuals = random_residuals(teacher_shapes(files), seed=1)
    cn.hook.UnetHook().hook(model=unet, sd_ldm=None, control_params=[unit(cn, residuals)],
                            process=None)
    x, t, context = inputs()
    with pytest.raises(RuntimeError, match="must match the size"), torch.no_grad():
        unet(x, timesteps=t, context=context)


@pytest.mark.parametrize("name", ["small", "base", "tiny", "custom"])
def test_each_residual_reaches_the_student_block_made_from_its_teacher_block(cn, files, name):
    residuals = random_residuals(teacher_shapes(files), seed=1)
    unet, out, blocks = run_hooked(cn, files[name], [unit(cn, residuals)])
    assert_same_blocks((out, blocks), run_reference(unet, name, residuals))
    plain, _ = run_reference(unet, name)
    assert (out - plain).abs().max() > 1e-2  # the control did change the output


def test_several_units_add_up_per_teacher_block_with_their_own_scales(cn, files):
    shapes = teacher_shapes(files)
    first, second = random_residuals(shapes, seed=1), random_residuals(shapes, seed=2)
    units = [unit(cn, first, weight=0.5), unit(cn, second, soft=True)]
    unet, out, blocks = run_hooked(cn, files["small"], units)
    # "My prompt is more important": residual k scaled by 0.825 ** (12 - k), k the TEACHER's index
    combined = [0.5 * a + 0.825 ** (12 - k) * b for k, (a, b) in enumerate(zip(first, second))]
    assert_same_blocks((out, blocks), run_reference(unet, "small", combined))


@pytest.mark.parametrize("name", ["small", "tiny", "custom"])
def test_t2i_adapter_additions_go_to_the_output_of_each_kept_stage(cn, files, name):
    adapter = adapter_features(files)
    unet, out, blocks = run_hooked(cn, files[name], [unit(cn, adapter, kind="T2I_Adapter")])
    assert_same_blocks((out, blocks), run_reference(unet, name, adapter=adapter))


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_without_control_the_hooked_student_is_the_student(cn, files, name):
    unet, out, _ = run_hooked(cn, files[name], [])
    unet.forward = unet._original_forward
    x, t, context = inputs()
    with torch.no_grad():
        assert torch.equal(out, unet(x, timesteps=t, context=context))


def test_a_teacher_is_left_to_the_hook(cn, files):
    residuals = random_residuals(teacher_shapes(files), seed=1)
    unet = load_unet(files["teacher"])
    cn.hook.UnetHook().hook(model=unet, sd_ldm=None, control_params=[unit(cn, residuals)],
                            process=None)
    hooked = unet.forward
    cn.adapt(unet, SimpleNamespace(filename=str(files["teacher"])))
    assert unet.forward == hooked


def test_the_hook_restores_the_student(cn, files):
    unet = load_unet(files["small"])
    hook = cn.hook.UnetHook()
    hook.hook(model=unet, sd_ldm=None, control_params=[], process=None)
    cn.adapt(unet, SimpleNamespace(filename=str(files["small"])))
    hook.restore()
    assert "forward" not in unet.__dict__ or unet.forward.__func__ is type(unet).forward


def changed_version(tmp_path: Path, version: str, walk_changed: bool) -> Path:
    folder = tmp_path / "sd-webui-controlnet"
    shutil.copytree(STANDIN, folder)
    (folder / "scripts" / "controlnet_version.py").write_text("version_flag = 'v%s'\n" % version)
    if walk_changed:  # a future hook that injects adapters one block later
        hook = folder / "scripts" / "hook.py"
        hook.write_text(hook.read_text().replace("[2, 5, 8, 11]", "[3, 6, 9, 11]"))
    return folder


def test_a_version_whose_walk_changed_is_refused_in_one_line(cn, files, tmp_path):
    hook, enums = import_extension(changed_version(tmp_path, "1.2.0", walk_changed=True))
    cn.hook, cn.enums = hook, enums
    residuals = random_residuals(teacher_shapes(files), seed=1)
    with pytest.raises(BadInput) as refused:
        run_hooked(cn, files["small"], [unit(cn, residuals)])
    message = str(refused.value)
    assert message.startswith("BK-SDM") and "1.2.0" in message and "\n" not in message


def test_an_unknown_version_with_the_same_walk_is_adapted(cn, files, tmp_path):
    cn.hook, cn.enums = import_extension(changed_version(tmp_path, "1.1.460", walk_changed=False))
    residuals = random_residuals(teacher_shapes(files), seed=1)
    unet, out, blocks = run_hooked(cn, files["small"], [unit(cn, residuals)])
    assert_same_blocks((out, blocks), run_reference(unet, "small", residuals))


def test_control_lora_is_refused_on_a_student(cn, files):
    residuals = random_residuals(teacher_shapes(files), seed=1)
    with pytest.raises(BadInput, match="BK-SDM: Control-LoRA"):
        run_hooked(cn, files["small"], [unit(cn, residuals, kind="ControlLoRA")])


def test_txt2img_with_controlnet_on_a_student_in_the_webui(cn, files, tmp_path):
    """The extension's on_cfg_denoiser callback adapts the hook inside A1111's sampling loop."""
    import webui_env
    from modules import processing

    folder = webui_env.start_webui(tmp_path / "webui")
    for suffix in (".safetensors", ".yaml"):
        shutil.copy(files["small"].with_suffix(suffix), folder / ("small" + suffix))
    model = webui_env.load(folder / "small.safetensors")
    residuals = random_residuals(teacher_shapes(files), seed=1)  # 128 px: 16x16 latents

    def txt2img(weight=None):
        hook = cn.hook.UnetHook()
        if weight is not None:
            units = [unit(cn, residuals, weight=weight), unit(cn, residuals, weight=weight)]
            hook.hook(model=model.model.diffusion_model, sd_ldm=model, control_params=units,
                      process=None)
        p = processing.StableDiffusionProcessingTxt2Img(
            prompt="a red circle", steps=2, width=128, height=128, sampler_name="Euler", seed=1,
            do_not_save_samples=True, do_not_save_grid=True)
        try:
            return torch.tensor(list(processing.process_images(p).images[0].getdata())).float()
        finally:
            hook.restore()

    try:
        plain = txt2img()
        assert torch.equal(txt2img(weight=0.0), plain)
        assert (txt2img(weight=1.0) - plain).abs().max() > 0
        assert torch.equal(txt2img(), plain)  # restore() took the adaptation away with the hook
    finally:
        webui_env.standin_app.reset(tmp_path / "after")
