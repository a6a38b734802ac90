"""The FastAPI control API: the only public surface of detrforge."""
