"""CNN and Transformer baselines. Importing registers them (cheap: no torchvision at import)."""

from baselines import unet  # noqa: F401
