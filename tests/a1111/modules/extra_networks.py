"""Stand-in for A1111 1.10.1 ``modules/extra_networks.py``: ``<name:arg1:arg2>`` tags in prompts and the registry
of extra networks (the built-in Lora extension registers ``lora``, alias ``lyco``).

Behaviour kept: ``parse_prompts`` strips the tags from every prompt and returns the first prompt's
``{name: [ExtraNetworkParams, ...]}``; ``activate`` calls each mentioned network's ``activate(p, params)`` in that
order, then every other registered one with ``[]`` (which is how a LoRA of the previous job is switched off), then
``p.scripts.after_extra_networks_activate``; ``deactivate`` likewise. A network that raises is reported
(``errors.display``) and skipped. Not kept: the UI-side helpers (user metadata, cards)."""

import re
from collections import defaultdict

from modules import errors

extra_network_registry = {}
extra_network_aliases = {}
re_extra_net = re.compile(r"<(\w+):([^>]+)>")


def initialize():
    extra_network_registry.clear()
    extra_network_aliases.clear()


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


def register_extra_network_alias(extra_network, alias):
    extra_network_aliases[alias] = extra_network


class ExtraNetworkParams:
    """``items``: the tag's arguments; ``positional`` those without ``=``, ``named`` the ``key=value`` ones."""

    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            key, sep, value = item.partition("=") if isinstance(item, str) else (item, "", "")
            if sep and "=" not in value:
                self.named[key] = value
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return self.items == other.items


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def lookup_extra_networks(extra_network_data):
    """``{ExtraNetwork: params}`` for the names the prompts used (aliases resolved; unknown names reported)."""
    found = {}
    for name, params in extra_network_data.items():
        network = extra_network_registry.get(name) or extra_network_aliases.get(name)
        if network is None:
            print(f"Skipping unknown extra network: {name}")
            continue
        found.setdefault(network, []).extend(params)
    return found


def _each(networks, call, what):
    """``call(network)`` for each; one that raises is reported and skipped. Returns those that ran."""
    done = []
    for network in networks:
        try:
            call(network)
            done.append(network)
        except Exception as e:
            errors.display(e, f"{what} extra network {network.name}")
    return done


def activate(p, extra_network_data):
    mentioned = lookup_extra_networks(extra_network_data)
    activated = _each(mentioned, lambda n: n.activate(p, mentioned[n]), "activating")
    _each([n for n in extra_network_registry.values() if n not in activated], lambda n: n.activate(p, []), "activating")
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data):
    mentioned = lookup_extra_networks(extra_network_data)
    others = [n for n in extra_network_registry.values() if n not in mentioned]
    _each(list(mentioned) + others, lambda n: n.deactivate(p), "deactivating")


def parse_prompt(prompt):
    found = defaultdict(list)

    def take(match):
        found[match.group(1)].append(ExtraNetworkParams(items=match.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, take, prompt), found


def parse_prompts(prompts):
    """Prompts without their tags, and the first prompt's networks (1.10.1 uses those for the whole batch)."""
    stripped, first = [], None
    for prompt in prompts:
        text, data = parse_prompt(prompt)
        if first is None:
            first = data
        stripped.append(text)
    return stripped, first
