"""CogView4 (`CogView4Transformer2DModel`): text-to-image MMDiT; one stack of blocks that attend jointly over the text
and image tokens and return (hidden_states, encoder_hidden_states), image first."""

from diffusers import CogView4Transformer2DModel

from .decoders import CogView4Decoder
from .spec import BlockStack, ModelFamily

COGVIEW4 = ModelFamily(
    name="CogView4",
    model_classes=(CogView4Transformer2DModel,),
    stacks=(
        BlockStack(
            "transformer_blocks",
            returns=("image", "text"),
            text_arg="encoder_hidden_states",
            # temb: silu of the timestep + size embedding (B, D_t); attention_mask: the text keep-mask (B, L_text).
            # The rotary table (cos, sin), each (L, d), is shared by every row.
            row_args=("temb", "attention_mask"),
            # Joint attention (returns both streams). The feed-forward is left out: a block calls its one `ff` twice
            # (image tokens, then text tokens), and a forecast stands in for one output per sub-module and block.
            forecastable=("attn1",),
        ),
    ),
    decoder=CogView4Decoder,
)
