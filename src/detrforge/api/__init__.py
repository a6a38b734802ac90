"""The FastAPI control API, the only public surface of detrforge: routes (parse, authorize, then
call ``detrforge.control`` with typed values), auth, the one error table, request limits,
readiness, and the server process (``server.py``)."""
