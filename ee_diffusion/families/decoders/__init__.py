"""Exit decoders: each family's output head replayed on an intermediate block's image stream."""

from .dit import DiTDecoder
from .flux import FluxDecoder
from .pixart import PixArtDecoder
from .qwenimage import QwenImageDecoder
from .sd3 import SD3Decoder
from .wan import WanDecoder

__all__ = ["DiTDecoder", "FluxDecoder", "PixArtDecoder", "QwenImageDecoder", "SD3Decoder", "WanDecoder"]
