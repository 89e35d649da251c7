"""A1111's "LCM" sampler for the versions that lack it (1.6 and 1.7; it came with 1.8.0), so a
consistency-distilled student or its LCM-LoRA draws in 2-8 steps on a Jetson's A1111 1.6.1
exactly as on 1.10.1 (docs/facts.md §15).

The denoiser and the loop are A1111 1.10.1's ``modules/sd_samplers_lcm.py`` written without
k-diffusion's classes (the same arithmetic: the 50 timesteps LCM was distilled on, a
linear schedule over them, the consistency boundary conditions at 10·t, fresh noise
between steps); the sampler is A1111's own ``KDiffusionSampler`` with it as the model, so
progress, interruption, the CFG batch and ControlNet's hooks work as for any sampler.
Where A1111 has its own "LCM" (1.8 and later), nothing is registered.
"""
from typing import Any, Optional

import torch

NAME = "LCM"
ALIASES = ["k_lcm"]
TRAINING_TIMESTEPS = 1000
ORIGINAL_TIMESTEPS = 50  # "LCM Original Timesteps" in A1111 1.10.1
SIGMA_DATA = 0.5  # the boundary conditions' sigma_data (not the eps scalings' 1.0)


def register() -> bool:
    """Add the LCM sampler to A1111's list unless it has one; True when added."""
    from modules import sd_samplers, sd_samplers_common

    if NAME in sd_samplers.all_samplers_map:
        return False
    data = sd_samplers_common.SamplerData(NAME, _sampler, ALIASES, {})
    sd_samplers.all_samplers.append(data)
    sd_samplers.all_samplers_map[NAME] = data
    sd_samplers.set_samplers()  # the dropdowns' and infotext aliases' lists
    return True


def _append_dims(x: torch.Tensor, dims: int) -> torch.Tensor:
    return x[(...,) + (None,) * (dims - x.ndim)]


class LCMDenoiser(torch.nn.Module):
    """k-diffusion's discrete eps denoiser over LCM's 50 timesteps, with LCM's boundary
    conditions on the output (1.10.1's ``LCMCompVisDenoiser``)."""

    def __init__(self, model: Any):
        super().__init__()
        self.inner_model = model
        self.skip_steps = TRAINING_TIMESTEPS // ORIGINAL_TIMESTEPS
        alphas_cumprod = model.alphas_cumprod.float()
        picked = TRAINING_TIMESTEPS - 1 - self.skip_steps * torch.arange(ORIGINAL_TIMESTEPS)
        valid = alphas_cumprod[picked.to(alphas_cumprod.device)].flip(0)  # ascending timestep
        self.register_buffer("sigmas", ((1 - valid) / valid) ** 0.5)
        self.register_buffer("log_sigmas", self.sigmas.log())

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The training timestep (0-999) of the nearest of the 50 sigmas."""
        nearest = (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        return nearest * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Log-linear interpolation between the 50 sigmas at a training timestep."""
        index = ((timestep - (self.skip_steps - 1)) / self.skip_steps).float().clamp(
            0, len(self.sigmas) - 1)
        low, high = index.floor().long(), index.ceil().long()
        weight = index.frac()
        return ((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]).exp()

    def get_sigmas(self, n: Optional[int] = None) -> torch.Tensor:
        """`n` sigmas, linear in timestep from the largest to the smallest, then 0."""
        if n is None:
            return torch.cat([self.sigmas.flip(0), self.sigmas.new_zeros([1])])
        timesteps = torch.linspace(float(self.sigma_to_t(self.sigma_max)),
                                   float(self.sigma_to_t(self.sigma_min)), n,
                                   device=self.sigmas.device)
        return torch.cat([self.t_to_sigma(timesteps), self.sigmas.new_zeros([1])])

    def forward(self, input: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        c_in = _append_dims(1 / (sigma ** 2 + 1) ** 0.5, input.ndim)
        eps = self.inner_model.apply_model(input * c_in, self.sigma_to_t(sigma), **kwargs)
        x0 = input - eps * _append_dims(sigma, input.ndim)
        scaled = _append_dims(self.sigma_to_t(sigma), input.ndim) * 10.0
        c_skip = SIGMA_DATA ** 2 / (scaled ** 2 + SIGMA_DATA ** 2)
        c_out = scaled / (scaled ** 2 + SIGMA_DATA ** 2) ** 0.5
        return c_out * x0 + c_skip * input


@torch.no_grad()
def sample_lcm(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any = None,
               callback: Any = None, disable: Any = None, noise_sampler: Any = None
               ) -> torch.Tensor:
    """Each step: the consistency function's x0, then fresh noise at the next sigma."""
    from tqdm.auto import trange

    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        def noise_sampler(sigma: Any, sigma_next: Any) -> torch.Tensor:
            return torch.randn_like(x)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                      "denoised": denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


def _sampler(model: Any) -> Any:
    """A1111's k-diffusion sampler running `sample_lcm` on `LCMDenoiser`, its noise between
    steps drawn from the image's seeded generator (``p.rng``), as A1111's ``TorchHijack``
    gives k-diffusion's loops, so a seed makes the same image on 1.6 as on 1.10."""
    from modules import sd_samplers_cfg_denoiser, sd_samplers_kdiffusion, shared

    class CFGDenoiserLCM(sd_samplers_cfg_denoiser.CFGDenoiser):
        @property
        def inner_model(self) -> LCMDenoiser:
            if self.model_wrap is None:
                self.model_wrap = LCMDenoiser(shared.sd_model)
            return self.model_wrap

    def seeded_lcm(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Any = None,
                   callback: Any = None, disable: Any = None) -> torch.Tensor:
        # (A1111 passes `sigmas` only to a loop whose signature names it.)
        return sample_lcm(model, x, sigmas, extra_args, callback, disable,
                          noise_sampler=lambda sigma, sigma_next: sampler.p.rng.next())

    sampler = sd_samplers_kdiffusion.KDiffusionSampler(seeded_lcm, model)
    sampler.model_wrap_cfg = CFGDenoiserLCM(sampler)
    sampler.model_wrap = sampler.model_wrap_cfg.inner_model
    return sampler
