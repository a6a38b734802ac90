"""The RF-DETR detector domain: COCO datasets (``data``), fine-tune and evaluation specs
(``specs``), the rfdetr adapter (``model``), inference, COCO evaluation, ONNX export, latency
measurement and the Pareto front of a sweep. Builds on ``detrforge.platform``; knows nothing of
the registry, the control layer or the API."""
