"""Lumina-Image 2.0 (`Lumina2Transformer2DModel`): caption and noise refiners (always run), then the main stack on the
padded joint sequence [caption; image] with per-row lengths, per-row rotary tables and a mask; called with
1 - t/1000, a timestep that grows along a run."""

from diffusers import Lumina2Transformer2DModel

from .decoders import Lumina2Decoder
from .spec import BlockStack, ModelFamily

LUMINA2 = ModelFamily(
    name="Lumina2",
    model_classes=(Lumina2Transformer2DModel,),
    stacks=(
        # the refiners run before it on every row; its stream (B, L_max, D) is the model's padded joint sequence;
        # attention_mask (B, L_max) (None when every row has the same length), image_rotary_emb (B, L_max, d) and
        # temb (B, D) are per row
        BlockStack("layers", row_args=("attention_mask", "image_rotary_emb", "temb"),
                   forecastable=("attn", "feed_forward")),
    ),
    decoder=Lumina2Decoder,
    timestep_scale=1000.0,
    timestep_reversed=True,
)
