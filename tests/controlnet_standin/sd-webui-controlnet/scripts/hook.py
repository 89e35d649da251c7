"""Stand-in for sd-webui-controlnet 1.1.455 ``scripts/hook.py``: the residual path of ``UnetHook``.

Mirrored (names, signatures, order of operations): ``TorchHijackForUnet``/``th`` (``cat`` resizes the first of two
tensors to the second's size), ``aligned_adding(base, x, require_channel_alignment)`` (0.0 adds nothing; a
residual of another size is resized, nearest, to the feature's: silently), ``ControlParams``, and
``UnetHook.hook(model, sd_ldm, control_params, process, ...)``, which sets ``model._original_forward`` and
replaces ``model.forward`` by ``forward_webui`` bound to the U-Net, registers ``guidance_schedule_handler`` with
``on_cfg_denoiser``; ``restore()`` undoes both. The inner ``forward``:

* per unit not stopped, of a ControlNet kind (``is_controlnet``) or ``T2I_Adapter``: the control model's outputs
  (``param.control_model(x=, hint=, timesteps=, context=, y=)``; a 9-channel inpainting U-Net gives a 4-channel
  ControlNet ``x[:, :4]``), scaled by ``weight`` (``soft_injection``: ControlNet ``weight * 0.825 ** (12 - i)``,
  T2I-Adapter ``weight * (0.25, 0.62, 0.825, 1.0)``; ``advanced_weighting`` replaces the scales), averaged over
  space with ``global_average_pooling``, summed over units into 13 ControlNet residuals (``[0.0] * 13``) and 4
  T2I-Adapter additions (``[0.0] * 4``);
* the walk: each ``input_blocks`` module, the T2I-Adapter addition popped from the front after modules 2, 5, 8
  and 11, every feature kept in ``hs``; ``middle_block``; the last ControlNet residual added; then each
  ``output_blocks`` module gets ``th.cat([h, aligned_adding(hs.pop(), residuals.pop(), ...)], dim=1)``;
  ``out``.

Not in the stand-in: cond/uncond marks and batch options, hires-fix hint switching, VAE-encoded hints,
attention/AdaIN injection (reference), revision, the inpaint ``x`` replacement, colour fix and inpaint-only
post-processing, medvram (``lowvram`` only moves the control models back to the CPU after each call), SDXL (``is_sdxl`` is always False here).
"""
from typing import List

import torch
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.diffusionmodules.util import timestep_embedding

from modules import script_callbacks
from scripts.enums import ControlModelType, HiResFixOption


class TorchHijackForUnet:
    """``torch``, except that ``cat`` of two tensors of different sizes resizes the first (nearest)."""

    def __getattr__(self, item):
        return self.cat if item == "cat" else getattr(torch, item)

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2:
            a, b = tensors
            if a.shape[-2:] != b.shape[-2:]:
                a = torch.nn.functional.interpolate(a, b.shape[-2:], mode="nearest")
            tensors = (a, b)
        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()


class ControlParams:
    def __init__(self, control_model, preprocessor, hint_cond, weight, guidance_stopped, start_guidance_percent,
                 stop_guidance_percent, advanced_weighting, control_model_type, hr_hint_cond,
                 global_average_pooling, soft_injection, cfg_injection, hr_option=HiResFixOption.BOTH,
                 control_context_override=None, effective_region_mask=None, union_control_types=None, **kwargs):
        self.control_model = control_model
        self.preprocessor = preprocessor
        self.hint_cond = hint_cond
        self.weight = weight
        self.guidance_stopped = guidance_stopped
        self.start_guidance_percent = start_guidance_percent
        self.stop_guidance_percent = stop_guidance_percent
        self.advanced_weighting = advanced_weighting
        self.control_model_type = control_model_type
        self.global_average_pooling = global_average_pooling
        self.hr_hint_cond = hr_hint_cond
        self.hr_option = hr_option
        self.soft_injection = soft_injection
        self.cfg_injection = cfg_injection
        self.effective_region_mask = effective_region_mask
        self.union_control_types = union_control_types or []

    def apply_effective_region_mask(self, out):
        if self.effective_region_mask is None:
            return out
        mask = torch.nn.functional.interpolate(self.effective_region_mask.to(out.device), size=out.shape[-2:],
                                               mode="bilinear")
        return out * mask


def aligned_adding(base, x, require_channel_alignment):
    if isinstance(x, float):
        return base if x == 0.0 else base + x
    if require_channel_alignment:
        zeros = torch.zeros_like(base)
        zeros[:, :x.shape[1], ...] = x
        x = zeros
    if (x.shape[-2] > 1 or x.shape[-1] > 1) and base.shape[-2:] != x.shape[-2:]:
        x = th.nn.functional.interpolate(x, size=base.shape[-2:], mode="nearest")
    return base + x


class UnetHook(torch.nn.Module):
    def __init__(self, lowvram=False) -> None:
        super().__init__()
        self.lowvram = lowvram
        self.model = None
        self.sd_ldm = None
        self.control_params = None

    def guidance_schedule_handler(self, x):
        for param in self.control_params or []:
            current = x.sampling_step / x.total_sampling_steps
            param.guidance_stopped = current < param.start_guidance_percent or current > param.stop_guidance_percent

    def hook(self, model, sd_ldm, control_params: List[ControlParams], process, batch_option_uint_separate=False,
             batch_option_style_align=False):
        self.model = model
        self.sd_ldm = sd_ldm
        self.control_params = control_params
        outer = self

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            is_sdxl = False
            total_t2i_adapter_embedding = [0.0] * 4
            total_controlnet_embedding = [0.0] * 13
            require_inpaint_hijack = False

            for param in outer.control_params:
                if param.guidance_stopped:
                    continue
                if not (param.control_model_type.is_controlnet or param.control_model_type == ControlModelType.T2I_Adapter):
                    continue
                x_in = x
                if param.control_model_type.is_controlnet:
                    control_model = param.control_model.control_model
                    if x.shape[1] != control_model.input_blocks[0][0].in_channels and x.shape[1] == 9:
                        x_in = x[:, :4, ...]
                        require_inpaint_hijack = True
                control = param.control_model(x=x_in, hint=param.hint_cond, timesteps=timesteps, context=context, y=y)
                control_scales = [param.weight] * 13
                if param.soft_injection:
                    if param.control_model_type == ControlModelType.T2I_Adapter:
                        control_scales = [param.weight * s for s in (0.25, 0.62, 0.825, 1.0)]
                    elif param.control_model_type.is_controlnet:
                        control_scales = [param.weight * (0.825 ** float(12 - i)) for i in range(13)]
                if param.advanced_weighting is not None:
                    control_scales = param.advanced_weighting
                control = [param.apply_effective_region_mask(c * scale) for c, scale in zip(control, control_scales)]
                if param.global_average_pooling:
                    control = [torch.mean(c, dim=(2, 3), keepdim=True) for c in control]
                target = total_controlnet_embedding if param.control_model_type.is_controlnet else total_t2i_adapter_embedding
                for idx, item in enumerate(control):
                    target[idx] = item + target[idx]

            # U-Net Encoder
            hs = []
            with th.no_grad():
                t_emb = timestep_embedding(timesteps, self.model_channels, repeat_only=False)
                emb = self.time_embed(t_emb)
                h = x
                for i, module in enumerate(self.input_blocks):
                    self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                    h = module(h, emb, context)
                    t2i_injection = [3, 5, 8] if is_sdxl else [2, 5, 8, 11]
                    if i in t2i_injection:
                        h = aligned_adding(h, total_t2i_adapter_embedding.pop(0), require_inpaint_hijack)
                    hs.append(h)
                self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                h = self.middle_block(h, emb, context)

            # U-Net Middle Block
            h = aligned_adding(h, total_controlnet_embedding.pop(), require_inpaint_hijack)

            # U-Net Decoder
            for i, module in enumerate(self.output_blocks):
                self.current_h_shape = (h.shape[0], h.shape[1], h.shape[2], h.shape[3])
                h = th.cat([h, aligned_adding(hs.pop(), total_controlnet_embedding.pop(), require_inpaint_hijack)], dim=1)
                h = module(h, emb, context)

            # U-Net Output
            h = h.type(x.dtype)
            h = self.out(h)
            return h

        def move_all_control_model_to_cpu():
            for param in getattr(outer, "control_params", []) or []:
                if isinstance(param.control_model, torch.nn.Module):
                    param.control_model.to("cpu")

        def forward_webui(*args, **kwargs):
            try:
                return forward(*args, **kwargs)
            finally:
                if outer.lowvram:
                    move_all_control_model_to_cpu()

        model._original_forward = model.forward
        outer.original_forward = model.forward
        model.forward = forward_webui.__get__(model, UNetModel)
        script_callbacks.on_cfg_denoiser(self.guidance_schedule_handler)

    def restore(self):
        script_callbacks.remove_callbacks_for_function(self.guidance_schedule_handler)
        self.control_params = None
        if self.model is not None and hasattr(self.model, "_original_forward"):
            self.model.forward = self.model._original_forward
            del self.model._original_forward
