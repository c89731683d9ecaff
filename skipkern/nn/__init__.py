"""Drop-in torch modules backed by skipkern's fused kernels."""
from skipkern.nn.skip_linear import SKIP_KINDS, SkipLinear
from skipkern.nn.skip_mlp import ARCHS, SkipMLP, malicious_init_

__all__ = ["SkipLinear", "SkipMLP", "malicious_init_", "ARCHS", "SKIP_KINDS"]
