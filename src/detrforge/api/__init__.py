"""The FastAPI control API, the only public surface of detrforge: routes, auth, the one error
table, readiness, the server process (``server.py``), and (until the control-layer move) the
application services (``job_service``, ``registry_service``, ``sweep_service``)."""
