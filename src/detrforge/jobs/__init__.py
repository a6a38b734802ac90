"""Entrypoints that run on the Ray cluster as ``python -m detrforge.jobs.<job>``: finetune (Ray
Train), sweep (Ray Tune), evaluate, benchmark. Never imports fastapi or the registry."""
