"""CUDA C++ sources of fastdrop's GPU kernels, shipped as package data (loaded by fastdrop._cupy_backend)."""
