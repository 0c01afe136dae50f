"""User tools around a trained model and a data set: inference and predict, pictures (visualize, browse),
data checks (check_data), backbone pre-training (pretrain) and TensorBoard logging (tensorboard)."""
