"""The loaded model and making new ones: the model session and controller, its card, reports and retraining."""
