"""Meta-training: the truncated-BPTT meta-gradient estimator, the training loop and checkpoints."""
from .checkpoint import CheckpointError, load_checkpoint, load_rule, save_checkpoint
from .trainer import meta_train
from .truncated import TruncatedBPTT

__all__ = ["CheckpointError", "load_checkpoint", "load_rule", "save_checkpoint", "meta_train", "TruncatedBPTT"]
