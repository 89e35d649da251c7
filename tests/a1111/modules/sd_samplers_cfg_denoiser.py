"""Stand-in for A1111 1.10.1 ``modules/sd_samplers_cfg_denoiser.py``: ``CFGDenoiser``, what the sampling loop calls
once per step. It checks ``shared.state`` first (interrupted or skipped: ``InterruptedException``), then runs the
U-Net on the classifier-free-guidance batch (prompt rows then negative-prompt rows, ``2 * batch_size`` latents in
one call with the ``batch_cond_uncond`` option, else one call per ``batch_size`` rows; the negative rows are left
out at small sigmas with ``s_min_uncond``/NGMS on odd steps) and combines ``uncond + cfg_scale * (cond - uncond)``.
Before the U-Net call the ``cfg_denoiser`` callbacks get a ``CFGDenoiserParams`` and may replace its inputs. With an
img2img mask (inpainting) the latent outside the mask is put back after each step (``init_latent * mask + nmask *
denoised``). No edit (InstructPix2Pix) models, unCLIP, refiner, padding of unequal prompt lengths, or the
cfg_denoised/cfg_after_cfg callbacks.
"""

import torch

from modules import prompt_parser, sd_samplers_common, shared
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.sampler = sampler
        self.p = None
        self.cond_scale_miltiplier = 1.0  # sic, 1.10.1's name
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        """Per image: the negative prediction plus ``weight * cond_scale`` times each prompt's difference to it."""
        uncond_out = x_out[-uncond.shape[0]:]
        combined = uncond_out.clone()
        for image, conds in enumerate(conds_list):
            for row, weight in conds:
                combined[image] += weight * cond_scale * (x_out[row] - uncond_out[image])
        return combined

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        state = shared.state
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)
        batch_size = len(conds_list)
        repeats = [len(conds) for conds in conds_list]

        def with_uncond_rows(values, uncond_rows):
            return torch.cat([torch.stack([values[i]] * n) for i, n in enumerate(repeats)] + [uncond_rows])

        x_in = with_uncond_rows(x, x)
        sigma_in = with_uncond_rows(sigma, sigma)
        image_cond_in = with_uncond_rows(image_cond, image_cond)

        denoiser_params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self)
        cfg_denoiser_callback(denoiser_params)
        x_in, image_cond_in, sigma_in = denoiser_params.x, denoiser_params.image_cond, denoiser_params.sigma
        tensor, uncond = denoiser_params.text_cond, denoiser_params.text_uncond

        skip_uncond = (self.step % 2) and s_min_uncond > 0 and sigma[0] < s_min_uncond
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            cond_in = tensor
        else:
            cond_in = torch.cat([tensor, uncond])

        def condition(c_crossattn, c_concat):
            return {"c_crossattn": [c_crossattn], "c_concat": [c_concat]}

        if shared.opts.batch_cond_uncond:
            x_out = self.inner_model(x_in, sigma_in, cond=condition(cond_in, image_cond_in[:len(x_in)]))
        else:
            x_out = torch.zeros_like(x_in)
            for a in range(0, x_out.shape[0], batch_size):
                b = a + batch_size
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=condition(cond_in[a:b], image_cond_in[a:b]))

        denoised_image_indexes = [conds[0][0] for conds in conds_list]
        if skip_uncond:  # the prompt's prediction stands in for the skipped negative one
            x_out = torch.cat([x_out, torch.cat([x_out[i:i + 1] for i in denoised_image_indexes])])
            denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0)
        else:
            denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale * self.cond_scale_miltiplier)

        if self.mask is not None:  # inpainting: the latent outside the mask stays the original image's
            denoised = denoised * self.nmask + self.init_latent * self.mask

        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[-uncond.shape[0]:])
        self.sampler.last_latent = self.get_pred_x0(torch.cat([x_in[i:i + 1] for i in denoised_image_indexes]),
                                                    torch.cat([x_out[i:i + 1] for i in denoised_image_indexes]), sigma)
        self.step += 1
        return denoised
