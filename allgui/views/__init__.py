"""Views of the app's state: the image with its overlay, the side panel, the batch table, the overlay bar, heatmaps."""
