"""The main window and the controllers it wires: analysis (the predictor and the queue of images) and files."""
