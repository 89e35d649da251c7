"""A teacher's ControlNet steers a distilled student the way it steers the teacher.

Teacher T (tiny, random), a tiny ControlNet C built for T from LDM parts (Zhang et al.'s
design: a copy of T's encoder fed the latent plus an encoded hint image, a 1x1 "zero"
convolution after each encoder block and after the middle), and a student S distilled from
T for a few dozen real steps.  C is applied through the sd-webui-controlnet hook stand-in:
unchanged on T, through BK-SDM's adaptation on S.  The change C makes to S's output must
correlate with the change it makes to T's clearly more than the change made by another,
unrelated ControlNet (a random control) does.
"""
from types import SimpleNamespace

import pytest
import torch

from bksdm_ext.demo import TINY_SD_V1
from test_controlnet import A1111_STANDIN, STANDIN, import_extension, load_unet  # noqa: F401
from test_distill import config, make_dataset

SAMPLES = 6
MIN_GAP = 0.15  # measured: 0.48 against 0.20 (Small and Tiny, 40 steps); the margin is half the gap


class TinyControlNet(torch.nn.Module):
    """A ControlNet for an LDM U-Net: its encoder copied (weights included, as training starts),
    a hint encoder down to the latent size, and one 1x1 convolution per residual."""

    def __init__(self, teacher: torch.nn.Module, seed: int) -> None:
        import copy

        super().__init__()
        self.model_channels = teacher.model_channels
        self.time_embed = copy.deepcopy(teacher.time_embed)
        self.input_blocks = copy.deepcopy(teacher.input_blocks)
        self.middle_block = copy.deepcopy(teacher.middle_block)
        widths = [block[-1].out_channels if hasattr(block[-1], "out_channels") else
                  block[0].out_channels for block in self.input_blocks]
        conv = torch.nn.Conv2d
        self.input_hint_block = torch.nn.Sequential(
            conv(3, 16, 3, padding=1), torch.nn.SiLU(), conv(16, 16, 3, stride=2, padding=1),
            torch.nn.SiLU(), conv(16, 32, 3, stride=2, padding=1), torch.nn.SiLU(),
            conv(32, self.model_channels, 3, stride=2, padding=1))
        self.zero_convs = torch.nn.ModuleList(conv(w, w, 1) for w in widths)
        self.middle_block_out = conv(widths[-1], widths[-1], 1)
        # Trained zero convs are not zero: give C's own ones (and its hint encoder) random weights.
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for module in [self.input_hint_block, self.zero_convs, self.middle_block_out]:
                for p in module.parameters():
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
        self.control_model = self  # what the hook reads (input_blocks[0][0].in_channels)

    def forward(self, x=None, hint=None, timesteps=None, context=None, **kwargs):
        from ldm.modules.diffusionmodules.util import timestep_embedding

        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        guided = self.input_hint_block(hint)
        outs, h = [], x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided
            outs.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        return outs + [self.middle_block_out(h)]


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    """Small and Tiny students distilled from the tiny teacher for 40 real steps each."""
    from bksdm_ext.train.distill import distill

    folder = tmp_path_factory.mktemp("effect")
    data = make_dataset(folder / "pairs")
    return {arch: distill(config(teacher, data, folder / arch, preset=arch, steps=40,
                                 batch_size=4))
            for arch in ("small", "tiny")}


def effects(hook, enums, adapt, unet, path, control, seed):
    """U-Net output with `control` minus without it, on SAMPLES random inputs and hints."""
    g = torch.Generator().manual_seed(seed)
    changes = []
    for _ in range(SAMPLES):
        x = torch.randn(1, 4, 8, 8, generator=g)
        t = torch.randint(100, 900, (1,), generator=g)
        context = torch.randn(1, 77, TINY_SD_V1.context_dim, generator=g)
        hint = torch.rand(1, 3, 64, 64, generator=g)
        param = hook.ControlParams(
            control_model=control, preprocessor={"name": "none"}, hint_cond=hint, weight=1.0,
            guidance_stopped=False, start_guidance_percent=0.0, stop_guidance_percent=1.0,
            advanced_weighting=None, control_model_type=enums.ControlModelType.ControlNet,
            hr_hint_cond=None, global_average_pooling=False, soft_injection=False,
            cfg_injection=False)
        unet_hook = hook.UnetHook()
        unet_hook.hook(model=unet, sd_ldm=None, control_params=[param], process=None)
        adapt(unet, SimpleNamespace(filename=str(path)))
        with torch.no_grad():
            controlled = unet(x, timesteps=t, context=context)
            unet_hook.restore()
            changes.append((controlled - unet(x, timesteps=t, context=context)).flatten())
    return torch.cat(changes)


def correlation(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.mark.parametrize("arch", ["small", "tiny"])
@pytest.mark.slow
def test_the_teachers_controlnet_moves_the_student_as_it_moves_the_teacher(
        teacher, distilled, arch):
    import sys

    sys.path.insert(0, str(A1111_STANDIN))
    import standin_app  # noqa: F401
    from bksdm_ext.webui.controlnet import adapt

    saved = {n: m for n, m in sys.modules.items() if n == "scripts" or n.startswith("scripts.")}
    try:
        hook, enums = import_extension(STANDIN)
        teacher_unet, student_unet = load_unet(teacher).float(), load_unet(distilled[arch]).float()
        control, other = TinyControlNet(teacher_unet, seed=1), TinyControlNet(teacher_unet, seed=2)
        on_teacher = effects(hook, enums, adapt, teacher_unet, teacher, control, seed=7)
        on_student = effects(hook, enums, adapt, student_unet, distilled[arch], control, seed=7)
        random_control = effects(hook, enums, adapt, student_unet, distilled[arch], other, seed=7)
    finally:
        for name in [n for n in sys.modules if n == "scripts" or n.startswith("scripts.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        sys.path.remove(str(A1111_STANDIN))
    same, random = correlation(on_student, on_teacher), correlation(random_control, on_teacher)
    print("\n%s: corr(student change, teacher change) with the teacher's ControlNet %.3f, "
          "with a random ControlNet %.3f" % (arch, same, random))
    assert same > random + MIN_GAP
