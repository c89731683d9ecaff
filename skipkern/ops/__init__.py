"""Fused ops: skip_linear (registered as torch custom ops, ``torch.ops.skipkern.*``) and rop_epilogue (the
fused R-op's elementwise passes). Each op validates its arguments here and resolves its backend through
skipkern.backends."""
from skipkern.ops.rop_epilogue import rop_epilogue_bwd, rop_epilogue_fwd
from skipkern.ops.skip_linear import skip_linear

__all__ = ["skip_linear", "rop_epilogue_fwd", "rop_epilogue_bwd"]
