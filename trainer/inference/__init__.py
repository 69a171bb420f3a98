"""Using a trained model.

The bundle file format, the predictor that turns an image into a decision, and the result types the app
shows.
"""
