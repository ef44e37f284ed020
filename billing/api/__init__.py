"""The HTTP API: ``create_app`` (``app.py``), one dependency module (``deps.py``), routers by area
(``routes/``). The only part of streamtoll that imports FastAPI."""
