"""homelab-ai test suite."""
