"""Exit decoders: each family's output head replayed on an intermediate block's image stream."""

from .dit import DiTDecoder
from .flux import FluxDecoder
from .pixart import PixArtDecoder
from .sd3 import SD3Decoder

__all__ = ["DiTDecoder", "FluxDecoder", "PixArtDecoder", "SD3Decoder"]
