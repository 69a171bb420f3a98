"""Images to numbers: gamma and augmentation, nucleus segmentation, stain normalisation, the
hand-crafted nucleus block, the CNN backbones and the cached feature extractor."""
