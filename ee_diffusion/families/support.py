"""The support table of the declared families, rendered from the declarations themselves (README, docs)."""

from __future__ import annotations

from .spec import ModelFamily


def support_table(families: tuple[ModelFamily, ...]) -> str:
    """A Markdown table: per family its classes, block stacks, timestep convention and what runs on it.

    Every row's claims come from the declaration: exits and both caches run on every declared family (the suite tests
    each per family); uncertainty heads and the layer-wise losses need the family's exit decoder. The trainer's
    stock-pipeline sources are a separate matter (docs/training.md).

    ```py
    >>> from ee_diffusion.families import DIT
    >>> print(support_table((DIT,)).splitlines()[2])
    | DiT | `DiTTransformer2DModel` | `transformer_blocks` | 0-999 | yes | yes | yes |

    ```
    """
    lines = [
        "| family | model class | block stacks, in order | timestep | exits | caches | exit decoder (heads, layer-wise "
        "losses) |",
        "|---|---|---|---|---|---|---|",
    ]
    for family in families:
        classes = ", ".join(f"`{cls.__name__}`" for cls in family.model_classes)
        stacks = ", then ".join(f"`{stack.attr}`" + (" (joint [text; image])" if stack.joint else "")
                                for stack in family.stacks)
        timestep = "0-999" if family.timestep_scale == 1.0 else f"0-{1000 / family.timestep_scale:g}"
        timestep = f"{timestep} reversed (1 - t)" if family.timestep_reversed else timestep
        heads = "yes" if family.decoder is not None else "no (no exit decoder)"
        lines.append(f"| {family.name} | {classes} | {stacks} | {timestep} | yes | yes | {heads} |")
    return "\n".join(lines)
