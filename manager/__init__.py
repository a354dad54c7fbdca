"""homelab-ai manager: the daemon on the GPU PC that keeps models resident on the GPU,
as many together as their declared memory fits in its budget (else one at a time)."""
