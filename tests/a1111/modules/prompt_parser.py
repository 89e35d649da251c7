"""Stand-in for A1111 1.10.1 ``modules/prompt_parser.py``: prompts -> conditioning schedules for the sampler.

As in 1.10.1, ``get_learned_conditioning`` calls ``model.get_learned_conditioning`` once per distinct prompt of the
batch (identical prompts share the result) and returns one schedule per prompt; ``get_multicond_learned_conditioning``
does the same for the positive prompts and wraps them as composable conditionings (``conds_list`` of
``(index, weight)``). Not parsed: prompt editing ``[a:b:when]``, alternation ``[a|b]``, ``AND`` and weights, so
every schedule is one entry that lasts all ``steps``.
"""

from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts with the image size they are for (what A1111's text encoders may read)."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__()
        self.extend(prompts)
        if copy_from is None:
            copy_from = prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules = schedules
        self.weight = weight


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape  # the shape of the prompts list
        self.batch = batch  # per prompt: a list of ComposableScheduledPromptConditioning


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res = []
    cache = {}
    for prompt in prompts:
        if prompt not in cache:
            conds = model.get_learned_conditioning(SdConditioning([prompt], copy_from=prompts))
            cache[prompt] = [ScheduledPromptConditioning(steps, conds[0])]
        res.append(cache[prompt])
    return res


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    learned = get_learned_conditioning(model, prompts, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(schedules)] for schedules in learned]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


def _cond_at(schedules, current_step):
    return next((entry.cond for entry in schedules if current_step <= entry.end_at_step), schedules[-1].cond)


def reconstruct_cond_batch(c, current_step):
    """``[B, tokens, width]``: each prompt's conditioning at ``current_step``."""
    return torch.stack([_cond_at(schedules, current_step) for schedules in c])


def reconstruct_multicond_batch(c, current_step):
    """``(conds_list, tensor)``: per prompt ``[(row in tensor, weight), ...]``, and all sub-prompt conditionings."""
    conds_list, rows = [], []
    for composable_prompts in c.batch:
        conds_for_batch = []
        for composable in composable_prompts:
            conds_for_batch.append((len(rows), composable.weight))
            rows.append(_cond_at(composable.schedules, current_step))
        conds_list.append(conds_for_batch)
    return conds_list, torch.stack(rows)
