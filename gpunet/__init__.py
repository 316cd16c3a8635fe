"""gpunet: fully connected classifiers on NumPy (CPU) or CuPy with fused CUDA kernels (GPU)."""

from . import backend, errors, layers, losses, optim
from .backend import get_backend, use_backend
from .model import MLP
from .packed import PackedMLP
from .step import TrainStep

__version__ = "0.1.0"

__all__ = ["MLP", "PackedMLP", "TrainStep", "backend", "errors", "get_backend", "layers",
           "losses", "optim", "use_backend", "__version__"]
