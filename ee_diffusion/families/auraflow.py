"""AuraFlow (`AuraFlowTransformer2DModel`): MMDiT joint blocks, then single-stream blocks on the joint sequence
[register + text tokens; image tokens] that the model concatenates between the two stacks and slices after them;
called with a 0-1 timestep."""

from diffusers import AuraFlowTransformer2DModel

from .decoders import AuraFlowDecoder
from .spec import BlockStack, ModelFamily

AURAFLOW = ModelFamily(
    name="AuraFlow",
    model_classes=(AuraFlowTransformer2DModel,),
    stacks=(
        # returns (encoder_hidden_states, hidden_states); `temb` (B, D) is per row
        BlockStack("joint_transformer_blocks", returns=("text", "image"), text_arg="encoder_hidden_states",
                   row_args=("temb",), forecastable=("attn", "ff", "ff_context")),
        # on the joint sequence: a row that left in the joint stack is parked behind a text part it never reads
        BlockStack("single_transformer_blocks", row_args=("temb",), forecastable=("attn", "ff"), joint=True),
    ),
    decoder=AuraFlowDecoder,
    timestep_scale=1000.0,
)
