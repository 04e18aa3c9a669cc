"""Synapse's organs, defined once: their class ids and how the papers print them. Plain constants
with no imports, so reports read them without loading the data readers (h5py, scipy)."""

# Class id (1..8) -> organ -> the papers' column name. The TransUNet-lineage order used by the VM-UNet
# code, which is also the column order of the TransUNet / Swin-Unet / VM-UNet tables (the authors never
# documented it, and other mappings circulate: SAMed's re-created data orders the organs by BTCV id).
SYNAPSE_ORGANS: dict[str, str] = {
    "aorta": "Aorta",
    "gallbladder": "Gallbladder",
    "kidney_l": "Kidney(L)",
    "kidney_r": "Kidney(R)",
    "liver": "Liver",
    "pancreas": "Pancreas",
    "spleen": "Spleen",
    "stomach": "Stomach",
}
