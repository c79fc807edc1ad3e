"""A trained model after training: loaded from a checkpoint on one process, sampled, exported to transformers."""
