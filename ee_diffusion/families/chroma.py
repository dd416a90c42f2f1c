"""Chroma (`ChromaTransformer2DModel`): Flux-like double-stream blocks, then single-stream blocks on the joint
sequence [text; image] (a joint stack: the model concatenates the two streams between the stacks); called with a 0-1
timestep; the model's loop slices each block's modulation from a per-row table."""

from diffusers import ChromaTransformer2DModel

from .decoders import ChromaDecoder
from .spec import BlockStack, ModelFamily

CHROMA = ModelFamily(
    name="Chroma",
    model_classes=(ChromaTransformer2DModel,),
    stacks=(
        # temb: the block's rows of the modulation table, (B, 12, D) double, (B, 3, D) single; attention_mask
        # (B, L_text + L); the rotary table (L_text + L, d) is shared by every row
        BlockStack("transformer_blocks", returns=("text", "image"), text_arg="encoder_hidden_states",
                   row_args=("temb", "attention_mask"), forecastable=("attn", "ff", "ff_context")),
        BlockStack("single_transformer_blocks", row_args=("temb", "attention_mask"),
                   forecastable=("attn", "proj_mlp", "proj_out"), joint=True),  # as Flux's single blocks
    ),
    decoder=ChromaDecoder,
    timestep_scale=1000.0,
    # controlnet residuals are added to the whole batch between blocks, where rows may have left
    unsupported_args=("controlnet_block_samples", "controlnet_single_block_samples",
                      "joint_attention_kwargs.ip_adapter_image_embeds"),
)
