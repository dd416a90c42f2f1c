"""The support table of the declared families, rendered from the declarations themselves (README, docs)."""

from __future__ import annotations

from .spec import ModelFamily


#: Families whose diffusers model does not trace as one graph by itself (torch 2.13, diffusers 0.42.1): Lumina2 reads
#: its per-sample caption lengths on the host, HiDream's mixtures of experts count each expert's tokens there. Hooked,
#: they compile with graph breaks (tests/test_family_compile.py).
MODEL_GRAPH_BREAKS = {"Lumina2": "with graph breaks (the model's own per-sample lengths)",
                      "HiDream": "with graph breaks (the model's own expert routing)"}


def support_table(families: tuple[ModelFamily, ...]) -> str:
    """A Markdown table: per family its classes, block stacks, timestep convention and what runs on it.

    Every row's claims come from the declaration: exits and both caches run on every declared family (the suite tests
    each per family); uncertainty heads and the layer-wise losses need the family's exit decoder. The trainer's
    stock-pipeline sources are a separate matter (docs/training.md). torch.compile: per-row exits planned by a
    schedule trace as one graph (`fullgraph=True`) unless the model itself does not trace whole
    (`MODEL_GRAPH_BREAKS`); tests/test_family_compile.py checks every family (and the caches, which break the graph
    once per call, on three).

    ```py
    >>> from ee_diffusion.families import DIT
    >>> print(support_table((DIT,)).splitlines()[2])
    | DiT | `DiTTransformer2DModel` | `transformer_blocks` | 0-999 | yes | yes | yes | fullgraph |

    ```
    """
    lines = [
        "| family | model class | block stacks, in order | timestep | exits | caches | exit decoder (heads, layer-wise "
        "losses) | torch.compile (exits) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family in families:
        classes = ", ".join(f"`{cls.__name__}`" for cls in family.model_classes)
        joint = {True: " (joint [text; image])", False: " (joint [image; text])"}
        stacks = ", then ".join(f"`{stack.attr}`" + (joint[stack.text_first] if stack.joint else "")
                                for stack in family.stacks)
        timestep = "0-999" if family.timestep_scale == 1.0 else f"0-{1000 / family.timestep_scale:g}"
        timestep = f"{timestep} reversed (1 - t)" if family.timestep_reversed else timestep
        heads = "yes" if family.decoder is not None else "no (no exit decoder)"
        compiles = MODEL_GRAPH_BREAKS.get(family.name, "fullgraph")
        lines.append(f"| {family.name} | {classes} | {stacks} | {timestep} | yes | yes | {heads} | {compiles} |")
    return "\n".join(lines)
