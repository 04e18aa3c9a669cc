"""SSM models (VM-UNet, VM-UNet-V2, LightM-UNet) and their shared pieces. Importing registers them."""
