"""Sana (`SanaTransformer2DModel`): text-to-image DiT with linear self-attention, cross-attention to the text and a
convolutional feed-forward (GLUMBConv) over the (height, width) token grid."""

from diffusers import SanaTransformer2DModel

from .decoders import SanaDecoder
from .spec import BlockStack, ModelFamily

SANA = ModelFamily(
    name="Sana",
    model_classes=(SanaTransformer2DModel,),
    stacks=(
        BlockStack(
            "transformer_blocks",
            # Called positionally: (hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
            # timestep, height, width). `timestep` is time_embed's per-row modulation (B, 6D); the post-patch height
            # and width (ints, the grid the feed-forward convolves over) pass through.
            row_args=("attention_mask", "encoder_hidden_states", "encoder_attention_mask", "timestep"),
            forecastable=("attn1", "attn2", "ff"),  # linear self-attention, cross-attention, GLUMBConv
        ),
    ),
    decoder=SanaDecoder,
    unsupported_args=("controlnet_block_samples",),
)
