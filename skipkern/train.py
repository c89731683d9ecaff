"""``skipkern.train``: the public names of the training package ``skipkern.training`` (loop, config,
measurements, checkpoint and metric files, resume rules, data parallelism)."""
from skipkern.training import *  # noqa: F401,F403
from skipkern.training import __all__  # noqa: F401
