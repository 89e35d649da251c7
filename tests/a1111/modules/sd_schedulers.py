"""Stand-in for A1111 1.10.1 ``modules/sd_schedulers.py``: the schedule types ("Schedule type" in the UI) by name,
label and alias, as 1.10.1 lists them, so ``sd_samplers.get_sampler_and_scheduler`` splits "DPM++ 2M Karras" the
same way. The stand-in computes no schedule of its own: every ``function`` is None and the samplers use the model's
uniform-timestep sigmas whatever the choice (see ``sd_samplers_kdiffusion``); the choice only reaches the infotext.
"""

import dataclasses


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: object

    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list = None


schedulers = [
    Scheduler("automatic", "Automatic", None),
    Scheduler("uniform", "Uniform", None, need_inner_model=True),
    Scheduler("karras", "Karras", None, default_rho=7.0),
    Scheduler("exponential", "Exponential", None),
    Scheduler("polyexponential", "Polyexponential", None, default_rho=1.0),
    Scheduler("sgm_uniform", "SGM Uniform", None, need_inner_model=True, aliases=["SGMUniform"]),
    Scheduler("kl_optimal", "KL Optimal", None),
    Scheduler("align_your_steps", "Align Your Steps", None),
    Scheduler("simple", "Simple", None, need_inner_model=True),
    Scheduler("normal", "Normal", None, need_inner_model=True),
    Scheduler("ddim", "DDIM", None, need_inner_model=True),
    Scheduler("beta", "Beta", None, need_inner_model=True),
]

schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
