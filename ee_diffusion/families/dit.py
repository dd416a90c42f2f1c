"""DiT (`DiTTransformer2DModel`): class-conditional, one stack of `BasicTransformerBlock`s (ada_norm_zero)."""

from diffusers import DiTTransformer2DModel

from .decoders import DiTDecoder
from .forecast_steps import basic_block_forecast_step
from .spec import BlockStack, ModelFamily

DIT = ModelFamily(
    name="DiT",
    model_classes=(DiTTransformer2DModel,),
    stacks=(
        BlockStack(
            "transformer_blocks",
            # Each block embeds (t, y) itself; `attention_mask`/`encoder_*` are None on class-conditional DiT.
            row_args=("timestep", "class_labels", "attention_mask", "encoder_hidden_states", "encoder_attention_mask"),
            forecastable=("attn1", "attn2", "ff"),  # self-attention, cross-attention (None here), feed-forward
            forecast_step=basic_block_forecast_step,  # a forecast call: gates and residual additions only
        ),
    ),
    decoder=DiTDecoder,
    # DiTPipeline and ours batch guidance as labels cat([y, null]); null = num_embeds_ada_norm.
    null_class=("class_labels", "num_embeds_ada_norm"),
)
