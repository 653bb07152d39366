"""Data sets, paired transforms and label-map I/O for semantic segmentation.

Every data set returns ``(image, mask)``: ``image`` a float32 ``(3, H, W)`` RGB tensor on the 0..255 scale
(not mean-subtracted: the CRF's bilateral kernel needs raw colours; models normalise internally) and
``mask`` an int64 ``(H, W)`` tensor of class indices with 255 = ignore ("void"). Each accepts an optional
paired ``transform(image, mask) -> (image, mask)``.

Batching: :class:`SyntheticShapes` samples all have one size, and a fixed-size crop
(``RandomCrop((h, w))``, ``CenterCrop``) gives any data set one size, so ``DataLoader``'s default collate
works. For variable-size images (PASCAL VOC) at evaluation time, pad every image to one size with
``PadTo((500, 500))`` as the paper does, batch with ``collate_fn=pad_collate`` (pads to the largest image
of the batch; padded mask pixels are 255), or use ``batch_size=1``.
"""

from crfrnn.data.collate import pad_collate
from crfrnn.data.folder import SegmentationFolder
from crfrnn.data.palette import color_palette, colorize, load_label_png, save_label_png
from crfrnn.data.scribbles import ScribbleDataset, scribbles_from_mask
from crfrnn.data.synthetic import SyntheticShapes, synthetic_splits
from crfrnn.data.transforms import CenterCrop, Compose, PadTo, RandomCrop, RandomHorizontalFlip, RandomScale
from crfrnn.data.voc import VOC_CLASSES, SBDSegmentation, VOCSegmentation, voc_train_aug

__all__ = [
    "CenterCrop",
    "Compose",
    "PadTo",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "SBDSegmentation",
    "ScribbleDataset",
    "SegmentationFolder",
    "SyntheticShapes",
    "VOCSegmentation",
    "VOC_CLASSES",
    "color_palette",
    "colorize",
    "load_label_png",
    "pad_collate",
    "save_label_png",
    "scribbles_from_mask",
    "synthetic_splits",
    "voc_train_aug",
]
