"""Stand-in for Forge's ``backend/nn/unet.py``: the constructor and forward of
``IntegratedUNet2DConditionModel`` as Forge has them, on LDM's blocks (whose parameter names
Forge's share).  The part that matters for a BK-SDM student: the middle block always starts
with a ResBlock and is always called."""
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from ldm.modules.attention import SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, TimestepBlock, Upsample
from ldm.modules.diffusionmodules.util import timestep_embedding
from torch import nn


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    def forward(self, x, emb, context=None, transformer_options={}, output_shape=None):
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class IntegratedUNet2DConditionModel(nn.Module, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, in_channels, model_channels, out_channels, num_res_blocks, dropout=0,
                 channel_mult=(1, 2, 4, 8), conv_resample=True, dims=2, num_classes=None,
                 use_checkpoint=False, num_heads=-1, num_head_channels=-1,
                 use_scale_shift_norm=False, resblock_updown=False, use_spatial_transformer=False,
                 transformer_depth=1, context_dim=None, disable_self_attentions=None,
                 num_attention_blocks=None, disable_middle_self_attn=False,
                 use_linear_in_transformer=False, adm_in_channels=None,
                 transformer_depth_middle=None, transformer_depth_output=None):
        super().__init__()
        self.model_channels = model_channels
        depth, depth_output = list(transformer_depth), list(transformer_depth_output)
        emb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(),
                                        nn.Linear(emb, emb))

        def resblock(channels, out=None):
            return ResBlock(channels, emb, dropout, out_channels=out, dims=dims,
                            use_checkpoint=False, use_scale_shift_norm=use_scale_shift_norm)

        def attention(channels, layers):
            heads = num_heads if num_head_channels == -1 else channels // num_head_channels
            return SpatialTransformer(channels, heads, channels // heads, depth=layers,
                                      context_dim=context_dim, use_linear=use_linear_in_transformer,
                                      use_checkpoint=False)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(
            nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skips, ch = [model_channels], model_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks[level]):
                layers = [resblock(ch, mult * model_channels)]
                ch = mult * model_channels
                layers += [attention(ch, d) for d in [depth.pop(0)] if d > 0]
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    Downsample(ch, conv_resample, dims=dims, out_channels=ch)))
                skips.append(ch)
        middle = [resblock(ch)]  # Forge's rule: always this ResBlock
        if transformer_depth_middle >= 0:
            middle += [attention(ch, transformer_depth_middle), resblock(ch)]
        self.middle_block = TimestepEmbedSequential(*middle)
        self.output_blocks = nn.ModuleList([])
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks[level] + 1):
                layers = [resblock(ch + skips.pop(), model_channels * mult)]
                ch = model_channels * mult
                layers += [attention(ch, d) for d in [depth_output.pop()] if d > 0]
                if level and i == num_res_blocks[level]:
                    layers.append(Upsample(ch, conv_resample, dims=dims, out_channels=ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(),
                                 nn.Conv2d(model_channels, out_channels, 3, padding=1))

    def forward(self, x, timesteps=None, context=None, y=None, control=None,
                transformer_options={}, **kwargs):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        hs, h = [], x
        for module in self.input_blocks:
            h = module(h, emb, context, transformer_options)
            hs.append(h)
        h = self.middle_block(h, emb, context, transformer_options)
        for module in self.output_blocks:
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context, transformer_options)
        return self.out(h).type(x.dtype)
