"""Making a model: the end-to-end training pipeline, backbone fine-tuning (loop, data, checkpoints,
distributed helpers) and the files of fine-tuned weights."""
