"""Training one net: the loop (``loop``), its settings (``config``), what it measures (``measure``),
its files (``checkpoint``, ``metrics``), the resume rules (``resume``) and data parallelism (``ddp``).
``skipkern.train`` re-exports the public names."""
from skipkern.training.checkpoint import (CHECKPOINT, CHECKPOINT_FORMAT, build_model, load_checkpoint, model_config,
                                          read_checkpoint, save_checkpoint)
from skipkern.training.config import TrainConfig, TrainResult, describe_regularizer
from skipkern.training.loop import resolve_device, train
from skipkern.training.measure import evaluate, hessian_spectrum, spectrum_fractions
from skipkern.training.metrics import METRICS_CSV, METRICS_JSONL, read_metrics, write_metrics
from skipkern.training.resume import run_identity

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "model_config", "build_model", "load_checkpoint",
           "read_checkpoint", "save_checkpoint", "read_metrics", "write_metrics", "spectrum_fractions",
           "hessian_spectrum", "describe_regularizer", "resolve_device", "run_identity", "CHECKPOINT",
           "CHECKPOINT_FORMAT", "METRICS_JSONL", "METRICS_CSV"]
