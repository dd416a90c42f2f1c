"""LTX-Video (`LTXVideoTransformer3DModel`): video DiT on packed latent tokens (B, F*H*W, C); one stack of blocks
that cross-attend to the text and take a per-row modulation (B, 1, 6D)."""

from diffusers import LTXVideoTransformer3DModel

from .decoders import LTXVideoDecoder
from .spec import BlockStack, ModelFamily

LTX_VIDEO = ModelFamily(
    name="LTX-Video",
    model_classes=(LTXVideoTransformer3DModel,),
    stacks=(
        BlockStack(
            "transformer_blocks",
            # The text (B, L_text, D), temb (B, 1, 6D), the text mask as a bias (B, 1, L_text) and the rotary table,
            # a (cos, sin) pair of (B, L, D) tensors (the rope grid is built per row), are all per row.
            row_args=("encoder_hidden_states", "temb", "encoder_attention_mask", "image_rotary_emb"),
            forecastable=("attn1", "attn2", "ff"),  # self-attention, cross-attention to the text, feed-forward
        ),
    ),
    decoder=LTXVideoDecoder,
)
