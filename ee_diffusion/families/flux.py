"""FLUX.1 (`FluxTransformer2DModel`): MMDiT double-stream blocks, then single-stream blocks; called with a 0-1
timestep on packed 2x2 latent tokens."""

from diffusers import FluxTransformer2DModel

from .decoders import FluxDecoder
from .spec import BlockStack, ModelFamily

# Both stacks take the two streams apart and return (encoder_hidden_states, hidden_states); `temb` (B, D) is per row,
# `image_rotary_emb` (L_text + L, d) is shared by every row and passes through.
_JOINT = dict(returns=("text", "image"), text_arg="encoder_hidden_states", row_args=("temb",))

FLUX = ModelFamily(
    name="Flux",
    model_classes=(FluxTransformer2DModel,),
    stacks=(
        BlockStack("transformer_blocks", **_JOINT, forecastable=("attn", "ff", "ff_context")),
        # a single block's attention and MLP branch (`proj_mlp`) act on the joint sequence, and its output projection
        # (`proj_out`, of both concatenated) is the block's largest matmul: forecast too, a forecast call skips it
        BlockStack("single_transformer_blocks", **_JOINT, forecastable=("attn", "proj_mlp", "proj_out")),
    ),
    decoder=FluxDecoder,
    timestep_scale=1000.0,
    unsupported_args=(
        "controlnet_block_samples", "controlnet_single_block_samples", "joint_attention_kwargs.ip_adapter_image_embeds"
    ),
)
