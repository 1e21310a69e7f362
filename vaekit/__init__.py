"""vaekit: Variational Autoencoders on PyTorch, from one command."""

__version__ = "0.1.0"

from vaekit.errors import VaekitError
from vaekit.io import load
from vaekit.run import Run, resume, train

__all__ = ["Run", "VaekitError", "__version__", "load", "resume", "train"]
