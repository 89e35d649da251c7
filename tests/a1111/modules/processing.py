"""Stand-in for A1111 1.10.1 ``modules/processing.py``: txt2img and img2img/inpainting through the loaded model.

``StableDiffusionProcessing`` and ``StableDiffusionProcessingTxt2Img`` are dataclasses with 1.10.1's fields (names,
order, annotations, defaults, ``init=False`` ones); ``sd_model`` is a property that always answers
``shared.sd_model`` (what is passed is ignored, as in 1.10.1). The data flow of ``process_images(p)`` is 1.10.1's:

1. ``p.override_settings`` applied (put back afterwards, but, as in 1.10.1, only those stored in ``opts.data``);
   ``sd_models.reload_model_weights()`` (loads the checkpoint the setting names, if it is not the loaded one);
   ``sd_samplers.fix_p_invalid_sampler_and_scheduler`` (an unknown sampler name is logged and replaced by
   "DPM++ 2M", it does not raise).
2. Seeds fixed (-1: random), ``all_prompts``/``all_negative_prompts``/``all_seeds`` for ``batch_size * n_iter``
   images; ``shared.state.job_count`` set to ``n_iter`` if it is -1 (not known).
3. Per iteration (stopped before it when ``state.interrupted`` or ``stopping_generation``; ``state.skipped`` is
   cleared): ``setup_conds`` -> ``prompt_parser`` -> ``sd_model.get_learned_conditioning`` (a ``cond_stage_model``
   forward) for the negative prompts, then the prompts, once per distinct text, through the cond cache: the class
   attributes ``cached_uc``/``cached_c`` keep the last result with its parameters (prompts, steps, checkpoint,
   size, ...), so a repeated job does not run the text encoder again; ``close()`` empties them only when the
   ``persistent_cond_cache`` option (default True) is off.
4. ``p.sample``: ``sd_samplers.create_sampler`` -> ``steps`` U-Net calls (``sd_model.apply_model`` with
   ``2 * batch_size`` latents per call; see ``sd_samplers_cfg_denoiser``/``sd_samplers_kdiffusion``), with
   ``state.sampling_steps``/``sampling_step`` updated; an interrupt ends sampling and the last latent is decoded.
5. ``decode_latent_batch``: ``sd_model.decode_first_stage`` once per image, then ``state.nextjob()`` (``job_no`` + 1)
   and PIL images with infotexts; ``Processed``.

``StableDiffusionProcessingImg2Img`` (1.10.1's fields): ``init`` encodes the init images (resized to width x height)
with the VAE into ``init_latent``; with a mask (``create_binary_mask``, inverted with ``inpainting_mask_invert``) it
sets ``mask``/``nmask`` on the latent grid (rounded with ``mask_round``), applies ``inpainting_fill`` 1 (original),
2 (latent noise) or 3 (latent nothing), and builds ``image_conditioning`` with ``img2img_image_conditioning``: for a
model whose ``conditioning_key`` is ``hybrid``/``concat`` (inpainting) ``inpainting_image_conditioning`` = the mask
on the latent grid and the latent of the image with the masked part blanked (``inpainting_mask_weight``), which
``apply_model`` concatenates to the latent (5 extra U-Net input channels); else a dummy ``[B, 5, 1, 1]``.
``sample`` runs ``sample_img2img`` and keeps the original latent outside the mask. txt2img on an inpainting model
gets 1.10.1's all-masked conditioning (a grey image's latent and a mask of ones). Not in the stand-in's img2img:
mask blur (``mask_blur`` must be 0), "Only masked" (``inpaint_full_res=True`` with a mask raises
NotImplementedError), ``inpainting_fill`` 0 ("fill": NotImplementedError), resize modes other than 0, overlays
(the final image is not composited with the original), colour correction, image CFG scale (edit models).

Scripts and extra networks (1.10.1's order): with ``p.scripts`` set (A1111's txt2img and API set it to
``scripts.scripts_txt2img``), ``p.scripts.process(p)`` once before the first iteration; per iteration
``before_process_batch``, the prompts' ``<name:args>`` tags parsed out (``extra_networks.parse_prompts``: the first
prompt's tags apply to the batch), ``extra_networks.activate`` (unless ``disable_extra_networks``; it ends with
``p.scripts.after_extra_networks_activate``), ``process_batch``, then the conds; after the last iteration
``extra_networks.deactivate``. ``p.comment(...)`` texts reach ``Processed.comments`` (the page's info), not the
infotext.

Not in the stand-in: selectable scripts and script arguments, styles, hires fix (``enable_hr=True``
raises NotImplementedError; the ``hr_*`` fields are accepted), refiner, token merging, face restoration, tiling,
subseeds/variation seeds, saving images or grids or params.txt, NaN checks, live previews, prompt-editing syntax.
Noise: ``rng.ImageRNG``, one CPU ``torch.Generator`` per seed (1.10.1's default draws on the GPU).
The state's and options' objects are read through ``shared`` at call time (``standin_app.reset`` replaces them).
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from modules import devices, extra_networks, prompt_parser, rng, sd_models, sd_samplers, sd_samplers_common, shared

opt_C = 4
opt_f = 8


def create_binary_mask(image, round=True):
    """An RGBA mask's alpha channel (thresholded at 128 with ``round``), else the image as greyscale."""
    if image.mode == 'RGBA' and image.getextrema()[-1] != (255, 255):
        if round:
            image = image.split()[-1].convert("L").point(lambda x: 255 if x > 128 else 0)
        else:
            image = image.split()[-1].convert("L")
    else:
        image = image.convert('L')
    return image


def txt2img_image_conditioning(sd_model, x, width, height):
    if sd_model.model.conditioning_key in {'hybrid', 'concat'}:  # inpainting models: everything is masked
        image_conditioning = torch.ones(x.shape[0], 3, height, width, device=x.device) * 0.5
        image_conditioning = sd_samplers_common.images_tensor_to_samples(image_conditioning)
        image_conditioning = torch.nn.functional.pad(image_conditioning, (0, 0, 0, 0, 1, 0), value=1.0)
        return image_conditioning.to(x.dtype)
    # models without image conditioning (not inpainting/unCLIP) get a small dummy tensor, as in 1.10.1
    return x.new_zeros(x.shape[0], 5, 1, 1, dtype=x.dtype, device=x.device)


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list[str] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    ddim_discretize: str = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    disable_extra_networks: bool = False
    firstpass_image: Image = None

    scripts_value: scripts.ScriptRunner = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)

    cached_uc = [None, None]
    cached_c = [None, None]

    comments: dict = None
    sampler: sd_samplers_common.Sampler | None = field(default=None, init=False)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)
    paste_to: tuple | None = field(default=None, init=False)

    is_hr_pass: bool = field(default=False, init=False)

    c: tuple = field(default=None, init=False)
    uc: tuple = field(default=None, init=False)

    rng: rng.ImageRNG | None = field(default=None, init=False)
    step_multiplier: int = field(default=1, init=False)
    color_corrections: list = field(default=None, init=False)

    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)

    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)

    user: str = field(default=None, init=False)

    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    sd_vae_name: str = field(default=None, init=False)
    sd_vae_hash: str = field(default=None, init=False)

    is_api: bool = field(default=False, init=False)

    def __post_init__(self):
        if self.sampler_index is not None:
            print("sampler_index argument for StableDiffusionProcessing does not do anything; use sampler_name", file=sys.stderr)
        self.comments = {}
        self.styles = [] if self.styles is None else self.styles
        self.extra_generation_params = dict(self.extra_generation_params or {})
        self.override_settings = dict(self.override_settings or {})
        self.script_args = self.script_args or {}
        self.sampler_noise_scheduler_override = self.refiner_checkpoint_info = None
        if not self.seed_enable_extras:  # the variation-seed controls are ignored
            self.subseed, self.subseed_strength, self.seed_resize_from_h, self.seed_resize_from_w = -1, 0, 0, 0
        # the instance shares the class-level cond caches (close() may replace the class's lists)
        self.cached_c, self.cached_uc = type(self).cached_c, type(self).cached_uc

    @property
    def sd_model(self):
        return shared.sd_model  # always the loaded model

    @sd_model.setter
    def sd_model(self, value):
        pass  # ignored

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value

    def fill_fields_from_opts(self):
        """Sampler parameters left None take the settings' values (s_tmax 0 means no limit)."""
        for name in ("s_min_uncond", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(shared.opts, name))
        self.s_tmax = self.s_tmax or float("inf")

    def comment(self, text):
        self.comments[text] = 1

    def txt2img_image_conditioning(self, x, width=None, height=None):
        self.is_using_inpainting_conditioning = self.sd_model.model.conditioning_key in {'hybrid', 'concat'}
        return txt2img_image_conditioning(self.sd_model, x, width or self.width, height or self.height)

    def inpainting_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        """The mask on the latent grid, then the latent of the image with the masked part blanked: ``[B, 1+4, h, w]``."""
        self.is_using_inpainting_conditioning = True
        if image_mask is not None:
            if torch.is_tensor(image_mask):
                conditioning_mask = image_mask
            else:
                conditioning_mask = np.array(image_mask.convert("L")).astype(np.float32) / 255.0
                conditioning_mask = torch.from_numpy(conditioning_mask[None, None])
                if round_image_mask:
                    conditioning_mask = torch.round(conditioning_mask)
        else:
            conditioning_mask = source_image.new_ones(1, 1, *source_image.shape[-2:])
        conditioning_mask = conditioning_mask.to(device=source_image.device, dtype=source_image.dtype)
        conditioning_image = torch.lerp(source_image, source_image * (1.0 - conditioning_mask),
                                        getattr(self, "inpainting_mask_weight", shared.opts.inpainting_mask_weight))
        conditioning_image = self.sd_model.get_first_stage_encoding(self.sd_model.encode_first_stage(conditioning_image))
        conditioning_mask = torch.nn.functional.interpolate(conditioning_mask, size=latent_image.shape[-2:])
        conditioning_mask = conditioning_mask.expand(conditioning_image.shape[0], -1, -1, -1)
        image_conditioning = torch.cat([conditioning_mask, conditioning_image], dim=1)
        return image_conditioning.to(shared.device).type(self.sd_model.dtype)

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        if self.sampler.conditioning_key in {'hybrid', 'concat'}:
            return self.inpainting_image_conditioning(source_image, latent_image, image_mask=image_mask,
                                                      round_image_mask=round_image_mask)
        # dummy zero conditioning if we're not using inpainting or depth model
        return latent_image.new_zeros(latent_image.shape[0], 5, 1, 1)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError()

    def close(self):
        self.sampler = self.c = self.uc = None
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessing.cached_c, StableDiffusionProcessing.cached_uc = [None, None], [None, None]

    def get_token_merging_ratio(self, for_hr=False):
        return 0  # no token merging in the stand-in

    def setup_prompts(self):
        """One prompt and one negative prompt per image of the job (lists given are taken as they are)."""
        prompt, negative = self.prompt, self.negative_prompt
        if isinstance(prompt, list):
            self.all_prompts = prompt
        else:
            count = len(negative) if isinstance(negative, list) else self.batch_size * self.n_iter
            self.all_prompts = [prompt] * count
        self.all_negative_prompts = negative if isinstance(negative, list) else [negative] * len(self.all_prompts)
        if len(self.all_prompts) != len(self.all_negative_prompts):
            raise RuntimeError("Received a different number of prompts (%d) and negative prompts (%d)"
                               % (len(self.all_prompts), len(self.all_negative_prompts)))
        self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False):
        """What invalidates the cond cache when it changes (1.10.1 also keys on clip skip, emphasis, fp8, ...)."""
        return (list(required_prompts), steps, hires_steps, use_old_scheduling, shared.sd_model.sd_checkpoint_info,
                extra_network_data, self.width, self.height)

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        """``function(shared.sd_model, required_prompts, steps, hires_steps, False)``, unless one of ``caches``
        (``[params, result]`` lists) holds a result for the same parameters; a new result goes into the first."""
        params = self.cached_params(required_prompts, steps, extra_network_data, hires_steps, False)
        hit = next((cache for cache in caches if cache[0] is not None and cache[0] == params), None)
        if hit is not None:
            return hit[1]
        with devices.autocast():
            result = function(shared.sd_model, required_prompts, steps, hires_steps, False)
        caches[0][:] = [params, result]
        return result

    def setup_conds(self):
        """``self.uc`` (negative prompts) then ``self.c`` (prompts), through the cond caches."""
        size = dict(width=self.width, height=self.height)
        config = sd_samplers.find_sampler_config(self.sampler_name)
        self.firstpass_steps = total_steps = config.total_steps(self.steps) if config is not None else self.steps
        self.step_multiplier = total_steps // self.steps
        negatives = prompt_parser.SdConditioning(self.negative_prompts, is_negative_prompt=True, **size)
        self.uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negatives, total_steps,
                                              [self.cached_uc], self.extra_network_data)
        prompts = prompt_parser.SdConditioning(self.prompts, **size)
        self.c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, prompts, total_steps,
                                             [self.cached_c], self.extra_network_data)

    def get_conds(self):
        return self.c, self.uc

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def save_samples(self) -> bool:
        return False  # the stand-in never writes images


def _first(value):
    return value[0] if isinstance(value, list) else value


class Processed:
    """What a job returns: the images, their infotexts and the job's parameters."""

    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None, all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images, self.info, self.index_of_first_image = images_list, info, index_of_first_image
        self.prompt, self.negative_prompt = _first(p.prompt), _first(p.negative_prompt)
        self.seed = -1 if seed is None else int(_first(seed))
        self.subseed = -1 if subseed is None else int(_first(subseed))
        self.comments = "".join(text + "\n" for text in p.comments)
        for name in ("subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size",
                     "restore_faces", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
                     "extra_generation_params", "styles"):
            setattr(self, name, getattr(p, name))
        self.job_timestamp = shared.state.job_timestamp
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)
        self.version = program_version()

    def infotext(self, p: StableDiffusionProcessing, index):
        iteration, position = divmod(index, self.batch_size)
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[], position_in_batch=position, iteration=iteration)


def create_random_tensors(shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0, p=None):
    return rng.ImageRNG(shape, seeds, subseeds=subseeds, subseed_strength=subseed_strength,
                        seed_resize_from_h=seed_resize_from_h, seed_resize_from_w=seed_resize_from_w).next()


class DecodedSamples(list):
    already_decoded = True


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    """One ``decode_first_stage`` per image of the batch, as 1.10.1 decodes (no NaN checks here)."""
    decoded = DecodedSamples()
    for index in range(len(batch)):
        image = sd_samplers_common.decode_first_stage(model, batch[index:index + 1])[0]
        decoded.append(image if target_device is None else image.to(target_device))
    return decoded


def get_fixed_seed(seed):
    """An int seed; -1, None, "" or a string that is not a number: a random one (a list is kept as it is)."""
    if isinstance(seed, list):
        return seed
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        seed = -1
    return random.randrange(4294967294) if seed == -1 else seed


def fix_seed(p):
    p.seed, p.subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)


def program_version():
    import launch

    version = launch.git_tag()
    return None if version == "<none>" else version


def _quote(text):
    """1.10.1's ``infotext_utils.quote``: a value with a comma, colon or newline as a JSON string."""
    if ',' not in str(text) and '\n' not in str(text) and ':' not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0, use_main_prompt=False, index=None, all_negative_prompts=None):
    """"<prompt>\\nNegative prompt: <negative>\\nSteps: 20, Sampler: ..., Version: v1.10.1" for one image (only the
    parameters the stand-in has; ``p.extra_generation_params`` come before the version, None values are left out,
    values with a comma, colon or newline JSON-quoted)."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = iteration * p.batch_size + position_in_batch
    negatives = p.all_negative_prompts if all_negative_prompts is None else all_negative_prompts
    prompt = p.main_prompt if use_main_prompt else all_prompts[index]
    negative = p.main_negative_prompt if use_main_prompt else negatives[index]
    params = [("Steps", p.steps), ("Sampler", p.sampler_name), ("Schedule type", p.scheduler),
              ("CFG scale", p.cfg_scale), ("Seed", p.all_seeds[0] if use_main_prompt else all_seeds[index]),
              ("Size", "%dx%d" % (p.width, p.height)), ("Model hash", p.sd_model_hash), ("Model", p.sd_model_name)]
    merged = dict(params)
    merged.update(p.extra_generation_params)
    merged["Version"] = program_version()
    line = ", ".join(key if key == value else "%s: %s" % (key, _quote(value)) for key, value in merged.items() if value is not None)
    lines = [prompt] + (["Negative prompt: " + negative] if negative else []) + [line]
    return "\n".join(lines).strip()


def process_images(p: StableDiffusionProcessing) -> Processed:
    opts = shared.opts
    overrides = p.override_settings
    saved = {key: opts.data[key] for key in overrides if key in opts.data}  # only stored settings come back
    try:
        if sd_models.checkpoint_aliases.get(overrides.get("sd_model_checkpoint")) is None:
            overrides.pop("sd_model_checkpoint", None)
            sd_models.reload_model_weights()  # the setting's checkpoint, if another one is loaded
        for key, value in overrides.items():
            opts.set(key, value, is_api=True, run_callbacks=False)
            if key == "sd_model_checkpoint":
                sd_models.reload_model_weights()
        sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            for key, value in saved.items():
                setattr(opts, key, value)


def _images(p, latents_decoded):
    """PIL images (with their infotext in ``info["parameters"]``) of decoded samples in [-1, 1]."""
    pixels = torch.clamp((torch.stack(latents_decoded).float() + 1.0) / 2.0, min=0.0, max=1.0)
    for i, sample in enumerate(pixels):
        p.batch_index = i
        image = Image.fromarray((255. * sample.permute(1, 2, 0).cpu().numpy()).astype(np.uint8))
        image.info["parameters"] = create_infotext(p, p.prompts, p.seeds, p.subseeds, index=i, all_negative_prompts=p.negative_prompts)
        yield image


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """The loop txt2img and img2img share: ``p.init`` once, then per iteration conds, ``p.sample``, decoding."""
    state = shared.state
    assert (len(p.prompt) > 0) if isinstance(p.prompt, list) else (p.prompt is not None)
    devices.torch_gc()

    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    p.restore_faces = bool(p.restore_faces)  # no face restoration or tiling in the stand-in
    p.tiling = bool(p.tiling)
    model = shared.sd_model
    p.sd_model_name, p.sd_model_hash = model.sd_checkpoint_info.name_for_extra, model.sd_model_hash
    p.fill_fields_from_opts()
    p.setup_prompts()
    count = len(p.all_prompts)
    p.all_seeds = seed if isinstance(seed, list) else [int(seed) + (i if p.subseed_strength == 0 else 0) for i in range(count)]
    p.all_subseeds = subseed if isinstance(subseed, list) else [int(subseed) + i for i in range(count)]

    if p.scripts is not None:
        p.scripts.process(p)
    images, infotexts = [], []
    with torch.no_grad(), p.sd_model.ema_scope():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            state.skipped = False  # a skip ends one iteration only
            if state.interrupted or state.stopping_generation:
                break
            sd_models.reload_model_weights()  # the model may have changed between iterations

            batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
            p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
            p.seeds, p.subseeds = p.all_seeds[batch], p.all_subseeds[batch]
            latent_shape = (getattr(shared.sd_model, "latent_channels", opt_C), p.height // opt_f, p.width // opt_f)
            p.rng = rng.ImageRNG(latent_shape, p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength,
                                 seed_resize_from_h=p.seed_resize_from_h, seed_resize_from_w=p.seed_resize_from_w)
            if not p.prompts:
                break

            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.parse_extra_network_prompts()
            if not p.disable_extra_networks:
                with devices.autocast():
                    extra_networks.activate(p, p.extra_network_data)
            if p.scripts is not None:
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
            p.setup_conds()
            if p.n_iter > 1:
                state.job = "Batch %d out of %d" % (n + 1, p.n_iter)

            with devices.without_autocast() if devices.unet_needs_upcast else devices.autocast():
                samples = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                                   subseed_strength=p.subseed_strength, prompts=p.prompts)
            if not getattr(samples, "already_decoded", False):
                samples = decode_latent_batch(p.sd_model, samples, target_device=devices.cpu, check_for_nans=True)
            devices.torch_gc()
            state.nextjob()

            for image in _images(p, samples):
                images.append(image)
                infotexts.append(image.info["parameters"])
            del samples
            devices.torch_gc()

        if not infotexts:
            infotexts.append(Processed(p, []).infotext(p, 0))
        p.color_corrections = None
        if not p.disable_extra_networks and p.extra_network_data:
            extra_networks.deactivate(p, p.extra_network_data)

    devices.torch_gc()
    return Processed(p, images_list=images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                     index_of_first_image=0, infotexts=infotexts)


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ''
    hr_negative_prompt: str = ''
    force_task_id: str = None

    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]

    hr_checkpoint_info: dict = field(default=None, init=False)
    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    truncate_x: int = field(default=0, init=False)
    truncate_y: int = field(default=0, init=False)
    applied_old_hires_behavior_to: tuple = field(default=None, init=False)
    latent_scale_mode: dict = field(default=None, init=False)
    hr_c: tuple | None = field(default=None, init=False)
    hr_uc: tuple | None = field(default=None, init=False)
    all_hr_prompts: list = field(default=None, init=False)
    all_hr_negative_prompts: list = field(default=None, init=False)
    hr_prompts: list = field(default=None, init=False)
    hr_negative_prompts: list = field(default=None, init=False)
    hr_extra_network_data: list = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        if self.firstphase_width or self.firstphase_height:  # old-style hires sizes: first pass at firstphase_*
            self.hr_upscale_to_x, self.hr_upscale_to_y = self.width, self.height
            self.width, self.height = self.firstphase_width, self.firstphase_height
        self.cached_hr_c, self.cached_hr_uc = type(self).cached_hr_c, type(self).cached_hr_uc

    def init(self, all_prompts, all_seeds, all_subseeds):
        if self.enable_hr:
            raise NotImplementedError("the A1111 stand-in has no hires fix")

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        """The first pass only: noise from ``self.rng`` through the sampler."""
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        noise = self.rng.next()
        return self.sampler.sample(self, noise, conditioning, unconditional_conditioning,
                                   image_conditioning=self.txt2img_image_conditioning(noise))

    def close(self):
        super().close()
        self.hr_c = self.hr_uc = None
        if not shared.opts.persistent_cond_cache:
            StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]
            StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]


def _clear_cond_caches():
    """(stand-in) what a WebUI restart does to the class-level cond caches; ``standin_app.reset`` calls it."""
    StableDiffusionProcessing.cached_c = [None, None]
    StableDiffusionProcessing.cached_uc = [None, None]
    StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]
    StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Image = None
    force_task_id: str = None

    image_mask: Any = field(default=None, init=False)

    nmask: torch.Tensor = field(default=None, init=False)
    image_conditioning: torch.Tensor = field(default=None, init=False)
    init_img_hash: str = field(default=None, init=False)
    mask_for_overlay: Image = field(default=None, init=False)
    init_latent: torch.Tensor = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        self.initial_noise_multiplier = shared.opts.initial_noise_multiplier if self.initial_noise_multiplier is None else self.initial_noise_multiplier

    @property
    def mask_blur(self):
        if self.mask_blur_x == self.mask_blur_y:
            return self.mask_blur_x
        return None

    @mask_blur.setter
    def mask_blur(self, value):
        if isinstance(value, int):
            self.mask_blur_x = value
            self.mask_blur_y = value

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        image_mask = self.image_mask
        if image_mask is not None:
            image_mask = create_binary_mask(image_mask, round=self.mask_round)
            if self.inpainting_mask_invert:
                image_mask = ImageOps.invert(image_mask)
                self.extra_generation_params["Mask mode"] = "Inpaint not masked"
            if self.mask_blur_x > 0 or self.mask_blur_y > 0:
                raise NotImplementedError("the A1111 stand-in has no mask blur: pass mask_blur=0")
            if self.inpaint_full_res:
                raise NotImplementedError('the A1111 stand-in has no "Only masked" inpainting: pass inpaint_full_res=False')
            if self.resize_mode != 0:
                raise NotImplementedError("the A1111 stand-in resizes images only with resize_mode 0")
            image_mask = image_mask.resize((self.width, self.height), Image.LANCZOS)
        latent_mask = self.latent_mask if self.latent_mask is not None else image_mask

        imgs = []
        for img in self.init_images:
            image = img.convert("RGB").resize((self.width, self.height), Image.LANCZOS)
            if image_mask is not None and self.inpainting_fill == 0:
                raise NotImplementedError('the A1111 stand-in has no "fill" masked content: pass inpainting_fill=1')
            imgs.append(np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0))
        if len(imgs) == 1:
            batch_images = np.expand_dims(imgs[0], axis=0).repeat(self.batch_size, axis=0)
        elif len(imgs) <= self.batch_size:
            self.batch_size = len(imgs)
            batch_images = np.array(imgs)
        else:
            raise RuntimeError(f"bad number of images passed: {len(imgs)}; expecting {self.batch_size} or less")

        image = torch.from_numpy(batch_images).to(shared.device, dtype=devices.dtype_vae)
        self.init_latent = sd_samplers_common.images_tensor_to_samples(image, model=self.sd_model)

        if image_mask is not None:
            latmask = latent_mask.convert('RGB').resize((self.init_latent.shape[3], self.init_latent.shape[2]))
            latmask = np.moveaxis(np.array(latmask, dtype=np.float32), 2, 0) / 255
            latmask = latmask[0]
            if self.mask_round:
                latmask = np.around(latmask)
            latmask = np.tile(latmask[None], (self.init_latent.shape[1], 1, 1))
            self.mask = torch.asarray(1.0 - latmask).to(shared.device).type(devices.dtype)
            self.nmask = torch.asarray(latmask).to(shared.device).type(devices.dtype)
            if self.inpainting_fill == 2:
                self.init_latent = self.init_latent * self.mask + create_random_tensors(self.init_latent.shape[1:], all_seeds[0:self.init_latent.shape[0]]) * self.nmask
                self.extra_generation_params["Masked content"] = 'latent noise'
            elif self.inpainting_fill == 3:
                self.init_latent = self.init_latent * self.mask
                self.extra_generation_params["Masked content"] = 'latent nothing'

        self.image_conditioning = self.img2img_image_conditioning(image * 2 - 1, self.init_latent, image_mask, self.mask_round)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            self.extra_generation_params["Noise multiplier"] = self.initial_noise_multiplier
            x *= self.initial_noise_multiplier
        samples = self.sampler.sample_img2img(self, self.init_latent, x, conditioning, unconditional_conditioning,
                                              image_conditioning=self.image_conditioning)
        if self.mask is not None:
            samples = samples * self.nmask + self.init_latent * self.mask
        return samples
