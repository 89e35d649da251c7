"""Stand-in for A1111 1.10.1 ``modules/sd_samplers.py``: samplers by name.

Every sampler name and alias of 1.10.1 is listed, in its order (so ``samplers[0]`` is "DPM++ 2M", the default),
but only "DPM++ 2M" and "Euler" can be created (``sd_samplers_kdiffusion``); creating another one raises
NotImplementedError (a stand-in limit, not 1.10.1 behaviour). As in 1.10.1:

* ``create_sampler(name, model)`` with an unknown name fails with ``AssertionError("bad sampler name: <name>")``.
* ``get_sampler_and_scheduler(sampler_name, scheduler_name)`` splits a scheduler label/name off the end of the
  sampler name ("DPM++ 2M Karras" -> "DPM++ 2M", "Karras"); unknown sampler names become ``samplers[0]``, unknown
  schedulers "Automatic" (or the sampler's default scheduler becomes "Automatic" with ``convert_automatic``).
* ``fix_p_invalid_sampler_and_scheduler(p)`` (what ``processing.process_images`` calls first) applies that to
  ``p.sampler_name``/``p.scheduler`` and logs a "Sampler Scheduler autocorrection" warning when it changed them, so
  an unknown sampler name does not raise there: the image is made with "DPM++ 2M".
"""

import logging

from modules import sd_samplers_common, sd_samplers_kdiffusion, sd_schedulers, shared


def _not_in_standin(name):
    def constructor(model):
        raise NotImplementedError("the A1111 stand-in implements only the DPM++ 2M and Euler samplers, not %s" % name)
    return constructor


_other_names = [  # (name, aliases) of 1.10.1's other samplers, in its order
    ("DPM++ SDE", ["k_dpmpp_sde"]), ("DPM++ 2M SDE", ["k_dpmpp_2m_sde"]), ("DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun"]),
    ("DPM++ 2S a", ["k_dpmpp_2s_a"]), ("DPM++ 3M SDE", ["k_dpmpp_3m_sde"]), ("Euler a", ["k_euler_a", "k_euler_ancestral"]),
    ("LMS", ["k_lms"]), ("Heun", ["k_heun"]), ("DPM2", ["k_dpm_2"]), ("DPM2 a", ["k_dpm_2_a"]), ("DPM fast", ["k_dpm_fast"]),
    ("DPM adaptive", ["k_dpm_ad"]), ("Restart", ["restart"]), ("DDIM", ["ddim"]), ("DDIM CFG++", ["ddim_cfgpp"]),
    ("PLMS", ["plms"]), ("UniPC", ["unipc"]), ("LCM", ["k_lcm"]),
]
_order = ["DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
          "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS",
          "UniPC", "LCM"]

_by_name = {x.name: x for x in sd_samplers_kdiffusion.samplers_data_k_diffusion}
_by_name.update({name: sd_samplers_common.SamplerData(name, _not_in_standin(name), aliases, {}) for name, aliases in _other_names})
all_samplers = [_by_name[name] for name in _order]
all_samplers_map = {x.name: x for x in all_samplers}

samplers = []
samplers_for_img2img = []
samplers_map = {}
samplers_hidden = {}


def find_sampler_config(name):
    return all_samplers_map.get(name, None) if name is not None else all_samplers[0]


def create_sampler(name, model):
    """A new sampler object for ``model``; ``config`` is its ``SamplerData``."""
    config = find_sampler_config(name)
    assert config is not None, "bad sampler name: %s" % name
    if config.options.get("no_sdxl", False) and model.is_sdxl:
        raise Exception("Sampler %s is not supported for SDXL" % config.name)
    created = config.constructor(model)
    created.config = config
    return created


def set_samplers():
    """(Re)reads ``all_samplers`` into the lists the dropdowns and infotext aliases use; run at import, as in 1.10.1
    (and 1.6.1), and by whoever adds a sampler to ``all_samplers``."""
    global samplers, samplers_for_img2img, samplers_hidden
    # (the stand-in may import this module before start-up makes opts; 1.10.1 imports it after)
    samplers_hidden = set(shared.opts.hide_samplers) if shared.opts is not None else set()
    samplers = all_samplers
    samplers_for_img2img = all_samplers
    samplers_map.clear()
    for sampler in all_samplers:
        samplers_map[sampler.name.lower()] = sampler.name
        for alias in sampler.aliases:
            samplers_map[alias.lower()] = sampler.name


def visible_sampler_names():
    return [x.name for x in samplers if x.name not in samplers_hidden]


def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    default_sampler = samplers[0]
    found_scheduler = sd_schedulers.schedulers_map.get(scheduler_name, sd_schedulers.schedulers[0])
    name = sampler_name or default_sampler.name
    for scheduler in sd_schedulers.schedulers:
        suffix = next((s for s in [scheduler.label, scheduler.name] + list(scheduler.aliases or []) if name.endswith(" " + s)), None)
        if suffix is not None:
            found_scheduler = scheduler
            name = name[:-(len(suffix) + 1)]
    sampler = all_samplers_map.get(name, default_sampler)
    if convert_automatic and sampler.options.get("scheduler", None) == found_scheduler.name:
        found_scheduler = sd_schedulers.schedulers[0]
    return sampler.name, found_scheduler.label


def fix_p_invalid_sampler_and_scheduler(p):
    given = (p.sampler_name, p.scheduler)
    fixed = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)
    p.sampler_name, p.scheduler = fixed
    if fixed != given:
        logging.warning('Sampler Scheduler autocorrection: "%s" -> "%s", "%s" -> "%s"', given[0], fixed[0], given[1], fixed[1])


set_samplers()
