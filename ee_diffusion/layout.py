"""`BatchLayout`: what a caller knows about the rows of the batches it gives the model.

A pipeline that builds its own classifier-free-guidance batches knows their layout; it tells the engine through
`early_exit(..., layout=BatchLayout(guidance_pairs=True))`, so the engine never compares tensors (no
O(B*C*H*W) work, no host sync) to rediscover the pairs. Without a layout - a stock diffusers pipeline driving a
hooked model - the engine infers the pairs from the inputs (the adapter's `is_cfg_pair_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLayout:
    """The layout of every batch the model is called with while it is declared.

    Args:
        guidance_pairs: True when every batch is `[conditional rows; their unconditional partners]` (2n rows,
            row i and row n + i are one guidance pair); False when the batch holds no pairs.

    ```py
    >>> BatchLayout(guidance_pairs=True).guidance_pairs
    True

    ```
    """

    guidance_pairs: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.guidance_pairs, bool):
            raise TypeError(f"guidance_pairs must be True or False, got {self.guidance_pairs!r}")

    def paired(self, batch_size: int) -> bool:
        """Whether a batch of `batch_size` rows is made of guidance pairs; ValueError for an odd paired batch."""
        if self.guidance_pairs and batch_size % 2:
            raise ValueError(
                f"the declared batch layout has guidance pairs, so the batch size must be even, got {batch_size}"
            )
        return self.guidance_pairs
