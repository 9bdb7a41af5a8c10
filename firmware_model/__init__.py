"""What runs on the wearable: numba kernels over plain arrays (device physics, controller). No host imports."""
