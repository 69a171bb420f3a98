"""Making a model: the training pipeline and backbone fine-tuning.

The end-to-end pipeline, the fine-tuning loop with its data, checkpoints and distributed helpers, and the
files of fine-tuned weights.
"""
