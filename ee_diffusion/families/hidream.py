"""HiDream-I1 (`HiDreamImageTransformer2DModel`): double-stream blocks, then single-stream blocks on the sequence
[image; text], the image first. Before each block the model's loop appends that block's own Llama tokens to the text
and cuts them off after it, on whole-batch tensors (`whole_batch`). The blocks are `HiDreamBlock` wrappers, their
sub-modules below `block.`; the image feed-forwards are mixtures of experts, routed per token."""

from diffusers import HiDreamImageTransformer2DModel

from .decoders import HiDreamDecoder
from .spec import BlockStack, ModelFamily

# Per row: temb (B, D), the rotary table (B, L + L_text, 1, d/2, 2, 2) and, for non-square latents, the key mask
# (B, L) (single blocks: (B, L + L_text)).
_ROWS = ("hidden_states_masks", "temb", "image_rotary_emb")

HIDREAM = ModelFamily(
    name="HiDream",
    model_classes=(HiDreamImageTransformer2DModel,),
    stacks=(
        # returns (hidden_states, encoder_hidden_states); the text is [T5; last Llama layer; this block's Llama layer]
        BlockStack("double_stream_blocks", returns=("image", "text"), text_arg="encoder_hidden_states", row_args=_ROWS,
                   forecastable=("block.attn1", "block.ff_i", "block.ff_t")),
        # joint: on [image; text; this block's Llama layer], of which the model keeps [image; text] (a tail cache
        # decides here, where the residual is of one sequence); whole_batch parks the rows that left, image first
        BlockStack("single_stream_blocks", row_args=_ROWS, forecastable=("block.attn1", "block.ff_i"), joint=True,
                   text_first=False),
    ),
    decoder=HiDreamDecoder,
    timestep_arg="timesteps",
    whole_batch=True,
)
