"""Wan 2.1 / 2.2 (`WanTransformer3DModel`): video DiT on 5-D latents; one stack of blocks that cross-attend to the
text and take a per-row modulation (B, 6, D) and a rotary table shared by every row."""

from diffusers import WanTransformer3DModel

from .decoders import WanDecoder
from .spec import BlockStack, ModelFamily

WAN = ModelFamily(
    name="Wan",
    model_classes=(WanTransformer3DModel,),
    stacks=(
        BlockStack(
            "blocks",
            # The model calls its blocks positionally: (hidden_states, encoder_hidden_states, temb, rotary_emb).
            row_args=("encoder_hidden_states", "temb"),
            forecastable=("attn1", "attn2", "ffn"),  # self-attention, cross-attention to the text, feed-forward
        ),
    ),
    decoder=WanDecoder,
)
