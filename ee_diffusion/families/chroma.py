"""Chroma (`ChromaTransformer2DModel`): Flux-like double-stream blocks, then single-stream blocks on the joint
sequence [text; image]; called with a 0-1 timestep; the model's loop slices each block's modulation (B, k, D) from a
per-row table.

Only the single-stream stack is declared. Between the stacks the model concatenates the text stream in front of the
image stream, so the single blocks' stream is (B, L_text + L, D) where the double blocks' is (B, L, D): a row parked
in the double stack has neither the shape nor the text tokens the rest of the model needs (the engine has no way to
re-form it at the stack boundary). The double blocks therefore always run; exits and caches act on the single blocks,
whose parked joint sequence the model's head slices like its own."""

from diffusers import ChromaTransformer2DModel

from .decoders import ChromaDecoder
from .spec import BlockStack, ModelFamily

CHROMA = ModelFamily(
    name="Chroma",
    model_classes=(ChromaTransformer2DModel,),
    stacks=(
        BlockStack(
            "single_transformer_blocks",
            # temb: the block's rows of the modulation table, (B, 3, D); attention_mask (B, L_text + L); the rotary
            # table (L_text + L, d) is shared by every row
            row_args=("temb", "attention_mask"),
            forecastable=("attn", "proj_mlp"),  # attention and the MLP branch, both on the joint sequence
        ),
    ),
    decoder=ChromaDecoder,
    timestep_scale=1000.0,
    # the double blocks' controlnet residuals are added where every row still runs; the single ones' are not
    unsupported_args=("controlnet_single_block_samples", "joint_attention_kwargs.ip_adapter_image_embeds"),
)
