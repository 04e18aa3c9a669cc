"""CNN and Transformer baselines. Importing registers them (cheap: no torchvision at import)."""

from baselines import swin_unet, transunet, unet  # noqa: F401
