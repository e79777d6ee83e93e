"""The file conventions the bundles and the data preparation share, in one light module (numpy only).

The lesion-mask rule of the whole collection is written here only: a 2D mask pixel (8-bit, after conversion to
grayscale) is lesion when its value exceeds ``MASK_THRESHOLD``. MONAI's ``AsDiscreted`` sets values >= its
threshold, hence the bundles' ``BUNDLE_MASK_THRESHOLD``; the two agree on every 8-bit value.
"""

import numpy as np

MASK_THRESHOLD = 127
BUNDLE_MASK_THRESHOLD = MASK_THRESHOLD + 0.5
# what inference reads, per kind of bundle
IMAGE_SUFFIXES = {"2d": (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"), "3d": (".nii.gz", ".nii")}
# evaluation_model -> the checkpoint file of a fold's models/fold<k>/ that evaluation, the fold ensemble and
# inference read: best (the best validation epoch) or final (the last epoch, as Galdran et al. evaluate)
EVALUATED_MODEL_FILES = {"best": "model.pt", "final": "model_final.pt"}


def lesion_pixels(values):
    """True where 8-bit grayscale mask values are lesion (the collection's mask rule)."""
    return np.asarray(values) > MASK_THRESHOLD
