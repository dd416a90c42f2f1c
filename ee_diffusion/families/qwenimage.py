"""Qwen-Image (`QwenImageTransformer2DModel`): MMDiT on packed latent tokens, called with a 0-1 timestep; each block
returns (encoder_hidden_states, hidden_states)."""

from diffusers import QwenImageTransformer2DModel

from .decoders import QwenImageDecoder
from .spec import BlockStack, ModelFamily

QWEN_IMAGE = ModelFamily(
    name="Qwen-Image",
    model_classes=(QwenImageTransformer2DModel,),
    stacks=(
        BlockStack(
            "transformer_blocks",
            returns=("text", "image"),
            text_arg="encoder_hidden_states",
            # the text mask (B, L_text), temb (B, D), and the per-token modulation index of the edit models (B, L)
            row_args=("encoder_hidden_states_mask", "temb", "modulate_index"),
            forecastable=("attn", "img_mlp", "txt_mlp"),
        ),
    ),
    decoder=QwenImageDecoder,
    timestep_scale=1000.0,
    unsupported_args=("controlnet_block_samples",),
)
