"""Images to numbers: pre-processing, segmentation and features.

Gamma and augmentation, nucleus segmentation, stain normalisation, the hand-crafted nucleus block, the CNN
backbones and the cached feature extractor.
"""
