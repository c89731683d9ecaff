"""Fused ops, registered as torch custom ops (``torch.ops.skipkern.*``)."""
from skipkern.ops.skip_linear import skip_linear

__all__ = ["skip_linear"]
