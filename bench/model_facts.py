"""The built-in models' facts, kept as data apart from the code that builds them.

``ModelFacts`` holds what ``register_model`` records besides code: family, paper and tiny configurations,
the authors' source and paper, a description, the pretrained file training starts from, the keys a
constructor chooses for the input. The model files register with theirs (``FACTS[name].register_args()``)
and take their ``PAPER_CONFIG`` from them, so each fact is written here once. Why apart: ``bench report``
and ``bench check`` label a run by these facts (its paper or tiny configuration), and importing the
models imports torch for nothing a report draws. A plugin's facts are in its registry entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

__all__ = ["FAMILIES", "ModelFacts", "FACTS", "built_in_facts"]

FAMILIES = ("ssm", "cnn", "transformer")


@dataclass(frozen=True)
class ModelFacts:
    """A built-in model's facts, ``register_model``'s keywords less the code (constructor, weight loaders)."""

    name: str
    family: str
    paper_config: Mapping[str, Any]
    # required: register_model would otherwise take the factory's docstring, and the two would differ
    description: str
    tiny: Mapping[str, Any] = field(default_factory=dict)  # overrides for tests and CPU smoke runs
    source: str = ""  # authors' repository and commit
    paper: str = ""
    init: tuple[str, str] | None = None  # (pretrained loader, file name); None: the authors train from scratch
    chooses: tuple[str, ...] = ()  # constructor keys fitted to the input (the registry's ModelEntry says more)

    def __post_init__(self) -> None:  # here, where the fact is written, not at the model file's import
        if self.family not in FAMILIES:
            raise ValueError(f"bench/model_facts.py: {self.name}'s family must be one of {FAMILIES}, "
                             f"got {self.family!r}")

    def register_args(self) -> dict[str, Any]:
        """These facts as ``register_model``'s keywords."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _by_name(*facts: ModelFacts) -> dict[str, ModelFacts]:
    """The facts by model name; a name given twice (a block copied and not renamed) is an error, not the
    first model's facts silently replaced."""
    by_name: dict[str, ModelFacts] = {}
    for f in facts:
        if by_name.setdefault(f.name, f) is not f:
            raise ValueError(f"bench/model_facts.py: two ModelFacts named {f.name!r}")
    return by_name


FACTS: dict[str, ModelFacts] = _by_name(
    ModelFacts(
        name="unet",
        family="cnn",
        paper_config={"encoder": "classic", "widths": (64, 128, 256, 512, 1024)},
        tiny={"widths": (8, 16, 32, 64)},
        source="bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets (U_Net), as used for Swin-Unet's U-Net row",
        paper="Ronneberger et al., MICCAI 2015, arXiv:1505.04597",
        description="Classic U-Net (widths 64…1024); encoder=<smp encoder> builds smp's Unet",
    ),
    ModelFacts(
        name="transunet",
        family="transformer",
        paper_config={"hidden": 768, "layers": 12, "heads": 12, "mlp_dim": 3072, "dropout": 0.1, "attn_dropout": 0.0,
                      "resnet_units": (3, 4, 9), "resnet_width": 64, "head_channels": 512,
                      "decoder_channels": (256, 128, 64, 16), "n_skip": 3},
        tiny={"hidden": 64, "layers": 2, "heads": 2, "mlp_dim": 128, "resnet_units": (1, 1, 1), "resnet_width": 32,
              "head_channels": 128, "decoder_channels": (64, 32, 16, 16)},
        source="Beckschen/TransUNet networks/vit_seg_modeling.py (VisionTransformer, get_r50_b16_config, n_skip 3)",
        paper="Chen et al., arXiv:2102.04306",
        description="TransUNet R50-ViT-B_16: ResNet-50 stages 1-3 + ViT-B/16, cascaded upsampler (105.28 M params)",
        init=("vit_npz", "R50+ViT-B_16.npz"),  # Google ImageNet-21k R50-ViT-B/16
    ),
    ModelFacts(
        name="swin_unet",
        family="transformer",
        paper_config={"embed_dim": 96, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7,
                      "drop_path_rate": 0.2},
        tiny={"embed_dim": 24, "num_heads": (1, 2, 4, 8)},
        source="HuCaoFighting/Swin-Unet@f48f623 networks/vision_transformer.py (SwinUnet), lite config",
        paper="Cao et al., ECCV-W 2022, arXiv:2105.05537",
        description="Swin-Unet: Swin-T blocks [2,2,2,2] with a mirrored decoder, window 7 (27.17 M params)",
        init=("swin_t", "swin_tiny_patch4_window7_224.pth"),  # Swin-T ImageNet-1k, encoder and decoder
        chooses=("window_size",),  # fitted to a small input (resolved_config)
    ),
    ModelFacts(
        name="vmunet",
        family="ssm",
        paper_config={"depths": (2, 2, 2, 2), "depths_decoder": (2, 2, 2, 1), "dims": (96, 192, 384, 768),
                      "d_state": 16, "drop_path_rate": 0.2},
        tiny={"dims": (16, 32, 64, 128), "depths": (1, 1, 1, 1), "depths_decoder": (1, 1, 1, 1)},
        source="JCruan519/VM-UNet@43c495b models/vmunet/vmunet.py (VMUNet)",
        paper="Ruan & Xiang, arXiv:2402.02491",
        description="VM-UNet: VSS-block encoder/decoder, 4-direction selective scan (27.43 M params)",
        init=("vmamba", "vmamba_small_e238_ema.pth"),  # VMamba-S, encoder and mirrored decoder
    ),
    ModelFacts(
        name="vmunet_v2",
        family="ssm",
        paper_config={"depths": (2, 2, 9, 2), "dims": (96, 192, 384, 768), "mid_channel": 48, "deep_supervision": True,
                      "d_state": 16, "drop_path_rate": 0.2},
        tiny={"dims": (16, 32, 64, 128), "depths": (1, 1, 1, 1), "mid_channel": 8},
        source="nobodyplayer1/VM-UNetV2@b65f04c models/vmunet/vmunet_v2.py (VMUNetV2)",
        paper="Zhang et al., arXiv:2403.09157",
        description="VM-UNet-V2: VSS encoder, CBAM + SDI fusion, conv decoder, fused two-head output (22.77 M params)",
        init=("vmamba", "vmamba_small_e238_ema.pth"),  # VMamba-S, encoder only
    ),
    ModelFacts(
        name="lightm_unet",
        family="ssm",
        paper_config={"spatial_dims": 2, "init_filters": 32, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1),
                      "num_groups": 8},
        tiny={"init_filters": 8, "blocks_down": (1, 1, 1, 1), "blocks_up": (1, 1, 1)},
        source="MrBlankness/LightM-UNet@6b72e27 lightm-unet/nnunetv2/nets/LightMUNet.py (LightMUNet)",
        paper="Liao et al., arXiv:2403.05246",
        description="LightM-UNet (2-D/3-D): SegResNet-style UNet with Mamba layers (5.01 M params as released)",
    ),
)


def built_in_facts(name: str) -> ModelFacts | None:
    """The facts of the built-in model named exactly ``name``; None for another name (a plugin's model,
    whose facts only its registry entry holds: ``bench.registry.get_entry`` loads it)."""
    return FACTS.get(name)
