"""A txt2img job as A1111 runs it, for the tabs that generate through the WebUI's own
pipeline (Latency, Compare)."""
from dataclasses import fields
from typing import Any, Dict, List

from ..errors import BadInput
from ..measure.latency import LatencySettings
from ..model.samplers import A1111_NAMES, DEFAULT_SAMPLER, SAMPLERS

SAMPLER = "DPM++ 2M Karras"  # the paper's Orin setup: 20 steps, 512², CFG 7, batch 1
# `bksdm eval`'s samplers as A1111 names them, where a tab draws the same comparison through
# A1111 (PNDM has no A1111 sampler: A1111's PLMS lacks its Runge-Kutta warm-up).
AS_IN_A1111 = dict(A1111_NAMES, **{DEFAULT_SAMPLER: SAMPLER, "dpmpp_2m": "DPM++ 2M"})


def a1111_sampler(sampler: str) -> str:
    """A1111's name for a sampler of `bksdm eval`; BadInput for one A1111 lacks."""
    if sampler not in AS_IN_A1111:
        raise BadInput("sampler %s has no A1111 equivalent to draw with here; one of %s (or "
                       "run it as a background job)"
                       % (sampler, ", ".join(s for s in SAMPLERS if s in AS_IN_A1111)))
    return AS_IN_A1111[sampler]


def txt2img(settings: LatencySettings, sampler: str) -> Any:
    """A txt2img job as A1111 runs it: 1.9+ splits "DPM++ 2M Karras" into a sampler and a
    scheduler, 1.6 has it as one sampler."""
    from modules import processing, shared

    kwargs: Dict[str, Any] = dict(
        sd_model=shared.sd_model, prompt=settings.prompt, negative_prompt="",
        seed=settings.seed, batch_size=settings.batch, n_iter=1, steps=settings.steps,
        cfg_scale=settings.cfg_scale, width=settings.size, height=settings.size,
        do_not_save_samples=True, do_not_save_grid=True, sampler_name=sampler)
    names = {f.name for f in fields(processing.StableDiffusionProcessingTxt2Img)}
    if "scheduler" in names and sampler.endswith(" Karras"):
        kwargs.update(sampler_name=sampler[: -len(" Karras")], scheduler="Karras")
    return processing.StableDiffusionProcessingTxt2Img(**kwargs)


def sampler_names() -> List[str]:
    """The samplers this A1111 offers (LCM on 1.6.1 once the extension registers it), and
    SAMPLER, which 1.9+ splits into a sampler and a scheduler."""
    from modules import sd_samplers

    names = [sampler.name for sampler in sd_samplers.all_samplers]
    return names + [SAMPLER] * (SAMPLER not in names)
