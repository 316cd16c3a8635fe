"""The NumPy backend's CPU machinery, one idea per module (docs/architecture.md, "Op table").

- ``pool``: the threads that split elementwise work, and per-thread scratch arrays;
- ``sums``: float32 column sums merged in float64 (float64 accuracy at float32 speed);
- ``batchnorm``: batch norm in fewer passes, with the in-place (centred) variant;
- ``optim``: the optimizer updates over cache-sized chunks, on ufuncs or the level-1 BLAS;
- ``gemm``: matrix products split over the threads with the BLAS held at one thread;
- ``mkl``: MKL's sequential sgemm, loaded when installed and the CPU is Intel's;
- ``blas1``: ``saxpy`` / ``saxpby`` from MKL or NumPy's OpenBLAS.

``gpunet.backend.numpy_backend.NumpyBackend`` overrides the reference ops with these.
"""
