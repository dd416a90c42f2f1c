"""PixArt-alpha / PixArt-sigma (`PixArtTransformer2DModel`): text-to-image DiT, `BasicTransformerBlock`s
(ada_norm_single) that cross-attend to the text."""

from diffusers import PixArtTransformer2DModel

from .decoders import PixArtDecoder
from .forecast_steps import basic_block_forecast_step
from .spec import BlockStack, ModelFamily

PIXART = ModelFamily(
    name="PixArt",
    model_classes=(PixArtTransformer2DModel,),
    stacks=(
        BlockStack(
            "transformer_blocks",
            # `timestep` here is adaln_single's per-row modulation (B, 6D); the text tokens are not returned.
            row_args=("timestep", "attention_mask", "encoder_hidden_states", "encoder_attention_mask"),
            forecastable=("attn1", "attn2", "ff"),  # self-attention, cross-attention to the text, feed-forward
            forecast_step=basic_block_forecast_step,  # a forecast call: gates and residual additions only
        ),
    ),
    decoder=PixArtDecoder,
)
