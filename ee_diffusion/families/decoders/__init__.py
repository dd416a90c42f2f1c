"""Exit decoders: each family's output head replayed on an intermediate block's image stream."""

from .auraflow import AuraFlowDecoder
from .chroma import ChromaDecoder
from .cogvideox import CogVideoXDecoder
from .cogview4 import CogView4Decoder
from .dit import DiTDecoder
from .flux import FluxDecoder
from .hidream import HiDreamDecoder
from .hunyuandit import HunyuanDiTDecoder
from .hunyuanvideo import HunyuanVideoDecoder
from .ltx import LTXVideoDecoder
from .lumina2 import Lumina2Decoder
from .pixart import PixArtDecoder
from .qwenimage import QwenImageDecoder
from .sana import SanaDecoder
from .sd3 import SD3Decoder
from .wan import WanDecoder

__all__ = [
    "AuraFlowDecoder",
    "ChromaDecoder",
    "CogVideoXDecoder",
    "CogView4Decoder",
    "DiTDecoder",
    "FluxDecoder",
    "HiDreamDecoder",
    "HunyuanDiTDecoder",
    "HunyuanVideoDecoder",
    "LTXVideoDecoder",
    "Lumina2Decoder",
    "PixArtDecoder",
    "QwenImageDecoder",
    "SanaDecoder",
    "SD3Decoder",
    "WanDecoder",
]
