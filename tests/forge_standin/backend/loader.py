"""Stand-in for Forge's ``backend/loader.py``: the U-Net branch of load_huggingface_component."""
from backend.nn.unet import IntegratedUNet2DConditionModel
from backend.operations import using_forge_operations
from backend.state_dict import load_state_dict


def load_huggingface_component(guess, component_name, lib_name, cls_name, repo_path, state_dict):
    assert cls_name == "UNet2DConditionModel", "the stand-in builds U-Nets only"
    unet_config = guess.unet_config.copy()
    with using_forge_operations(device="cpu", dtype=None):
        model = IntegratedUNet2DConditionModel.from_config(unet_config)
    load_state_dict(model, state_dict)
    return model
