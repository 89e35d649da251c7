"""Stand-in for A1111 1.10.1 ``modules/shared_items.py``: checkpoint and sampler list helpers, and the ``Shared`` module
class that makes ``shared.sd_model`` a property backed by ``sd_models.model_data``."""

import sys


def list_checkpoint_tiles(use_short=False):
    from modules import sd_models

    return sd_models.checkpoint_tiles(use_short)


def refresh_checkpoints():
    from modules import sd_models

    return sd_models.list_models()


def list_samplers():
    import modules.sd_samplers

    return modules.sd_samplers.all_samplers


class Shared(sys.modules[__name__].__class__):
    """Class of the ``modules.shared`` module object: reading ``sd_model`` loads a model on first use."""

    @property
    def sd_model(self):
        from modules import sd_models

        return sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        from modules import sd_models

        sd_models.model_data.set_sd_model(value)


sys.modules["modules.shared"].__class__ = Shared
