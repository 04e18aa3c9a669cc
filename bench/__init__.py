"""ssm-unet-bench: train and evaluate medical segmentation UNets under fixed, versioned protocols."""

__version__ = "0.1.0"
