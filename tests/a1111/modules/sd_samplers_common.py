"""Stand-in for A1111 1.10.1 ``modules/sd_samplers_common.py``: ``SamplerData``, the ``Sampler`` base class (state
updates, interruption), and latent -> image decoding.

* ``Sampler.launch_sampling(steps, func)`` sets ``shared.state.sampling_steps = steps`` and ``sampling_step = 0``,
  runs ``func``; ``callback_state`` (the sampling loop's per-step callback) sets ``state.sampling_step`` to the
  0-based index of the step just done. ``InterruptedException`` (raised by the CFG denoiser when
  ``state.interrupted``/``skipped``) ends sampling early and the last predicted latent is returned, as in 1.10.1.
* ``decode_first_stage(model, x)``: ``model.decode_first_stage`` in the VAE's dtype, outside autocast (only the
  "Full" VAE decode method: no TAESD/approximations, no live previews); ``images_tensor_to_samples(image)``:
  images in [0, 1] -> latents (``get_first_stage_encoding(encode_first_stage(2 * image - 1))``, the full VAE).
* ``setup_img2img_steps(p, steps)``: img2img's (steps, t_enc) from ``denoising_strength`` and the
  ``img2img_fix_steps`` option; ``Sampler.initialize`` hands the CFG denoiser ``p.mask``/``p.nmask``.
"""

from collections import namedtuple

import torch

from modules import devices, shared

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        return steps * 2 if self.options.get("second_order", False) else steps


approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


def samples_to_images_tensor(sample, approximation=None, model=None):
    """4-channel latents -> 3-channel images in about [-1, 1] (the full VAE only)."""
    model = model if model is not None else shared.sd_model
    with torch.no_grad(), devices.without_autocast():
        return model.decode_first_stage(sample.to(model.first_stage_model.dtype))


def images_tensor_to_samples(image, approximation=None, model=None):
    """image [0, 1] -> latent (the full VAE only)."""
    model = model if model is not None else shared.sd_model
    image = image.to(shared.device, dtype=devices.dtype_vae) * 2 - 1
    return model.get_first_stage_encoding(model.encode_first_stage(image))


def setup_img2img_steps(p, steps=None):
    if shared.opts.img2img_fix_steps or steps is not None:
        requested_steps = (steps or p.steps)
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def decode_first_stage(model, x):
    x = x.to(devices.dtype_vae)
    return samples_to_images_tensor(x, approximation_indexes["Full"], model)


class InterruptedException(BaseException):
    pass


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.stop_at = None
        self.eta = None
        self.config = None  # SamplerData; set by sd_samplers.create_sampler
        self.last_latent = None
        self.s_min_uncond = None
        self.conditioning_key = getattr(shared.sd_model.model, "conditioning_key", "crossattn")
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        """Called by the sampling loop after each step (``d["i"]``: its 0-based index)."""
        if self.stop_at is not None and d["i"] > self.stop_at:
            raise InterruptedException
        shared.state.sampling_step = d["i"]

    def launch_sampling(self, steps, func):
        """Runs the sampling loop ``func``; an interruption returns the latest predicted latent instead."""
        wrapper = self.model_wrap_cfg
        wrapper.steps, wrapper.total_steps = steps, self.config.total_steps(steps)
        shared.state.sampling_steps, shared.state.sampling_step = steps, 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def number_of_needed_noises(self, p):
        return p.steps

    def initialize(self, p):
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, 'mask') else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, 'nmask') else None
        self.model_wrap_cfg.step = 0
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        return {}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()

    def add_infotext(self, p):
        pass
