"""homelab-ai proxy: one OpenAI-compatible endpoint on the server for every model.

Routes each request by the model's type (text, embedding or image), asks the manager on the
GPU PC for a lease (which makes the model resident), forwards the request body
unchanged to the model server and streams the answer back. Also serves the web
UI in app/. Start it with ``python -m proxy``; build it with
``proxy.app.create_app``.
"""
