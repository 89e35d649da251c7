"""Guards the test environment the other tests rely on (built by `make .venv`).

The pins are those of an AUTOMATIC1111 1.10.1 install (pyproject's `test` extra);
if one of these fails, the venv is not the one the rest of the suite assumes.
"""
import importlib.metadata as metadata
import importlib.util

import pytest

PINNED = {
    "transformers": "4.30.2",
    "tokenizers": "0.13.3",
    "safetensors": "0.4.2",
    "numpy": "1.26.2",
    "Pillow": "9.5.0",
    "diffusers": "0.30.3",
    "gradio": "3.41.2",
    "gradio_client": "0.5.0",
    "accelerate": "0.21.0",
    "omegaconf": "2.2.3",
    "einops": "0.4.1",
    "pytorch_lightning": "1.9.4",
}


@pytest.mark.parametrize("dist, version", sorted(PINNED.items()))
def test_pinned_version_installed(dist, version):
    assert metadata.version(dist) == version


def test_torch_is_2_13():
    release = metadata.version("torch").split("+")[0]
    assert release.split(".")[:2] == ["2", "13"]


def test_xformers_not_importable():
    assert importlib.util.find_spec("xformers") is None


def test_ldm_unet_imports_and_runs():
    import torch
    from ldm.modules.diffusionmodules.openaimodel import UNetModel

    torch.manual_seed(0)
    unet = UNetModel(
        image_size=8, in_channels=4, out_channels=4, model_channels=32,
        attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4],
        num_heads=8, use_spatial_transformer=True, transformer_depth=1,
        context_dim=64, legacy=False,
    ).eval()
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), context=torch.randn(1, 5, 64))
    assert out.shape == (1, 4, 8, 8)


# lightning_fabric (under pytorch_lightning 1.9.4) uses the deprecated pkg_resources API.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning")
def test_ldm_autoencoder_imports():
    # Fails if a CUDA-only torchvision sneaks in: torchmetrics would import it.
    from ldm.models.autoencoder import AutoencoderKL

    assert AutoencoderKL is not None


def test_diffusers_unet_without_mid_block_runs():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type=None, cross_attention_dim=64, attention_head_dim=8,
    ).eval()
    assert unet.mid_block is None
    with torch.no_grad():
        out = unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=torch.randn(1, 5, 64)).sample
    assert out.shape == (1, 4, 8, 8)
