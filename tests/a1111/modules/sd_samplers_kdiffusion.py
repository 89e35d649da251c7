"""Stand-in for A1111 1.10.1 ``modules/sd_samplers_kdiffusion.py``: the k-diffusion samplers. The stand-in has two,
"DPM++ 2M" and "Euler" (``k_diffusion`` is not installed: the model wrapper and both sampling loops are the
stand-in's own, short versions).

* ``StandInCompVisDenoiser`` (k-diffusion's ``CompVisDenoiser``/``CompVisVDenoiser``): the model's discrete sigmas
  ``sqrt((1 - alphas_cumprod) / alphas_cumprod)``; ``forward(x, sigma, cond)`` scales ``x``, picks the nearest
  timestep and calls ``sd_model.apply_model(x, t, cond)`` once, and returns the denoised latent (eps or v).
* ``KDiffusionSampler.get_sigmas``: ``steps`` sigmas at uniformly spaced timesteps from the last to the first, then
  0 (k-diffusion's default schedule): the chosen scheduler (e.g. Karras) is recorded as "Schedule type" in the
  infotext but not applied. Each of the ``steps`` sampling steps calls the CFG denoiser, hence the U-Net, once.
* ``sample_euler`` (no churn) and ``sample_dpmpp_2m`` (second-order multistep in log-sigma): the updates of
  k-diffusion's samplers of those names, written for the stand-in.
* ``KDiffusionSampler.sample_img2img``: the image's latent plus noise at the schedule's sigma
  ``denoising_strength`` of the way down, then the rest of the schedule (no extra noise, no brownian noise).
"""

import math

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, sd_schedulers, shared


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + (x - denoised) / sigma * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        if sigma_next == 0:
            x = denoised
            break
        h = math.log(sigma) - math.log(sigma_next)  # step in -log(sigma)
        if old_denoised is None:
            estimate = denoised
        else:
            r = h_last / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
        old_denoised, h_last = denoised, h
    return x


class StandInCompVisDenoiser(torch.nn.Module):
    """(stand-in) k-diffusion's CompVisDenoiser (eps models) / CompVisVDenoiser (v models) for an ldm model."""

    def __init__(self, model, quantize=False):
        super().__init__()
        self.inner_model = model
        alphas_cumprod = model.alphas_cumprod.detach().float().cpu()
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5  # ascending, one per timestep
        self.v_prediction = getattr(model, "parameterization", "eps") == "v"

    def sigma_to_t(self, sigma):
        distances = (self.sigmas.log().to(sigma.device)[:, None] - sigma.float().log()[None, :]).abs()
        return distances.argmin(dim=0).float()

    def get_sigmas(self, n=None):
        if n is None:
            return torch.cat([self.sigmas.flip(0), self.sigmas.new_zeros([1])])
        t = torch.linspace(len(self.sigmas) - 1, 0, n).round().long()
        return torch.cat([self.sigmas[t], self.sigmas.new_zeros([1])])

    def forward(self, input, sigma, **kwargs):
        s = sigma.to(input.dtype)[:, None, None, None]
        c_in = 1 / (s ** 2 + 1) ** 0.5
        out = self.inner_model.apply_model(input * c_in, self.sigma_to_t(sigma), **kwargs).to(input.dtype)
        if self.v_prediction:
            return input / (s ** 2 + 1) - out * s / (s ** 2 + 1) ** 0.5
        return input - out * s


samplers_k_diffusion = [
    ("DPM++ 2M", sample_dpmpp_2m, ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("Euler", sample_euler, ["k_euler"], {}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = StandInCompVisDenoiser(shared.sd_model)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.options = options or {}
        self.func = funcname
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)
        if scheduler is not None and scheduler.label != "Automatic":
            p.extra_generation_params["Schedule type"] = scheduler.label
        return self.model_wrap.get_sigmas(steps).cpu()

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        """From the latent ``x`` noised to the sigma ``denoising_strength`` of the way down the schedule."""
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        return self.launch_sampling(t_enc + 1, lambda: self.func(
            self.model_wrap_cfg, xi, sigmas=sigma_sched, extra_args=self.sampler_extra_args, disable=False,
            callback=self.callback_state))

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        x = x * sigmas[0]
        self.initialize(p)
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        return self.launch_sampling(steps, lambda: self.func(
            self.model_wrap_cfg, x, sigmas=sigmas, extra_args=self.sampler_extra_args, disable=False,
            callback=self.callback_state))
