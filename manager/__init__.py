"""homelab-ai manager: the daemon on the GPU PC that keeps one model resident at a time."""
