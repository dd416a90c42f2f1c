"""Hunyuan-DiT (`HunyuanDiT2DModel`): a U-shaped DiT whose blocks cross-attend to the joined CLIP-and-T5 text; block
i of the second half takes block N-1-i's output as `skip`, kept by the model's own loop."""

from diffusers import HunyuanDiT2DModel

from .decoders import HunyuanDiTDecoder
from .spec import BlockStack, ModelFamily

HUNYUAN_DIT = ModelFamily(
    name="HunyuanDiT",
    model_classes=(HunyuanDiT2DModel,),
    stacks=(
        BlockStack(
            "blocks",
            # encoder_hidden_states: the [BERT; T5] text (B, L_text, D_text), cross-attended, not returned; temb
            # (B, D); skip: the kept output (B, L, D) of the mirror block. The rotary table (cos, sin), each (L, d),
            # is shared by every row.
            row_args=("encoder_hidden_states", "temb", "skip"),
            forecastable=("attn1", "attn2", "ff"),  # self-attention, cross-attention to the text, feed-forward
        ),
    ),
    decoder=HunyuanDiTDecoder,
    unsupported_args=("controlnet_block_samples",),  # added to the skips by the second half's index
    # The loop keeps the first half's outputs as the second half's skips: those must hold every row.
    whole_batch=True,
)
