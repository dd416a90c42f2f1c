"""CogVideoX (`CogVideoXTransformer3DModel`): video DiT on 5-D latents (B, F, C, H, W); one stack of blocks that
attend jointly over the text and video tokens and return (hidden_states, encoder_hidden_states), image first."""

from diffusers import CogVideoXTransformer3DModel

from .decoders import CogVideoXDecoder
from .spec import BlockStack, ModelFamily

COGVIDEOX = ModelFamily(
    name="CogVideoX",
    model_classes=(CogVideoXTransformer3DModel,),
    stacks=(
        BlockStack(
            "transformer_blocks",
            returns=("image", "text"),
            text_arg="encoder_hidden_states",
            # temb (B, D_t) is per row; the rotary tables (L, d) of the 5B models are shared by every row
            row_args=("temb",),
            forecastable=("attn1", "ff"),  # joint attention (returns both streams), feed-forward on the joint sequence
        ),
    ),
    decoder=CogVideoXDecoder,
)
