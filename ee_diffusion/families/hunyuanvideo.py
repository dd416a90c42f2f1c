"""HunyuanVideo (`HunyuanVideoTransformer3DModel`): video MMDiT on 5-D latents (B, C, F, H, W); dual-stream blocks,
then single-stream blocks on the joint sequence, both returning (hidden_states, encoder_hidden_states), image first.
The text token refiner (`context_embedder.token_refiner`) runs in the model's preamble, before either stack."""

from diffusers import HunyuanVideoTransformer3DModel

from .decoders import HunyuanVideoDecoder
from .spec import BlockStack, ModelFamily

# The model calls its blocks positionally: (hidden_states, encoder_hidden_states, temb, attention_mask, rotary,
# token_replace_emb, first_frame_num_tokens). temb (B, D), the joint attention mask (B, 1, 1, L + L_text) and the
# image-to-video models' token_replace_emb (B, D) are per row; the 3-D rotary tables (L, d) are shared by every row.
_JOINT = dict(
    returns=("image", "text"),
    text_arg="encoder_hidden_states",
    row_args=("temb", "attention_mask", "token_replace_emb"),
)

HUNYUAN_VIDEO = ModelFamily(
    name="HunyuanVideo",
    model_classes=(HunyuanVideoTransformer3DModel,),
    stacks=(
        BlockStack("transformer_blocks", **_JOINT, forecastable=("attn", "ff", "ff_context")),
        # a single block's attention, MLP branch and output projection (on both concatenated), as Flux's
        BlockStack("single_transformer_blocks", **_JOINT, forecastable=("attn", "proj_mlp", "proj_out")),
    ),
    decoder=HunyuanVideoDecoder,
)
