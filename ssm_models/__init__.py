"""SSM models (VM-UNet, VM-UNet-V2, LightM-UNet) and their shared pieces. Importing registers them.

Cheap on purpose: no mamba-ssm import and no kernel build until a scan runs.
"""

from ssm_models import lightm_unet, vmunet, vmunet_v2  # noqa: F401
