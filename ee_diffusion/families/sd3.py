"""Stable Diffusion 3 / 3.5 (`SD3Transformer2DModel`): MMDiT, `JointTransformerBlock`s with an image and a text
stream; the last block is `context_pre_only` and returns no text stream."""

from diffusers import SD3Transformer2DModel

from .decoders import SD3Decoder
from .spec import BlockStack, ModelFamily

SD3 = ModelFamily(
    name="SD3",
    model_classes=(SD3Transformer2DModel,),
    stacks=(
        BlockStack(
            "transformer_blocks",
            returns=("text", "image"),
            text_arg="encoder_hidden_states",
            row_args=("temb",),  # the combined timestep and pooled-text embedding (B, D)
            # the joint attention, SD3.5's second image attention, the image and the text feed-forward
            forecastable=("attn", "attn2", "ff", "ff_context"),
        ),
    ),
    decoder=SD3Decoder,
    unsupported_args=(
        "block_controlnet_hidden_states", "skip_layers", "joint_attention_kwargs.ip_adapter_image_embeds"
    ),
)
