"""homelab-ai's image server: one diffusers pipeline behind OpenAI's images API.

Run it with ``python -m imageserver`` (settings from ``HOMELAB_IMAGE_*``, see
`imageserver.settings`). Modules: `settings` (environment), `api` (HTTP),
`host` (background load and status), `worker` (the one GPU thread and its
bounded queue), `diffusers_model` (the real pipeline; imports torch),
`classify` (what a pipeline class can do), `images` (uploads, masks,
encoding), `model` (jobs and the model protocol), `errors`, `tiny` (a tiny
offline test pipeline).
"""
