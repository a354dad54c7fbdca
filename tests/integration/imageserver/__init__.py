"""Image server integration tests: real diffusers on the CPU with the tiny pipeline (marker `diffusers`)."""
