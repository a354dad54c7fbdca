"""The GPU worker: `wire.worker.ModelWorker` with the image server's thread and
`QueueFull` (HTTP 429). Loading, warm-up and each generation run on its one thread, so
two never touch the GPU at once; cancellation as that module says.
"""

from __future__ import annotations

from imageserver.errors import QueueFull
from wire.worker import ModelWorker


class GpuWorker(ModelWorker):
    def __init__(self, queue_limit: int) -> None:
        super().__init__(
            queue_limit,
            thread="imageserver-gpu",
            server="image server",
            busy="1 generation is running",
            refusal=QueueFull,
        )
