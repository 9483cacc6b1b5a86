"""Meta-training: the inner problems in flight, the meta-gradient estimators (truncated BPTT,
truncated ES, PES), the training loop and checkpoints."""
from .bptt import TruncatedBPTT
from .checkpoint import CheckpointError, load_checkpoint, load_rule, save_checkpoint
from .es import TruncatedES
from .inner import Estimate, InnerProblems
from .pes import PES
from .trainer import ESTIMATORS, build_estimator, meta_train

__all__ = ["CheckpointError", "ESTIMATORS", "Estimate", "InnerProblems", "PES", "TruncatedBPTT", "TruncatedES",
           "build_estimator", "load_checkpoint", "load_rule", "meta_train", "save_checkpoint"]
