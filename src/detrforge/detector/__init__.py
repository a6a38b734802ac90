"""The RF-DETR detector domain. Builds on ``detrforge.platform``; knows nothing of the registry,
the control layer or the API.

- Datasets: ``data`` (what a valid COCO dataset holds, its fingerprint, rfdetr's class order),
  ``dataset_checks`` (checking a dataset folder, every problem reported), ``synthetic`` (a
  deterministic shapes dataset for tests and benchmarks).
- Specs: ``specs`` (fine-tune, evaluate and benchmark specs), ``sweep_specs`` (the sweep spec).
- The model: ``model`` (the rfdetr adapter), ``export`` (ONNX export and its parity check).
- Inference: ``predictor`` (the interface and its detections), ``processing`` (pre- and
  post-processing in torch and numpy), ``torch_predictor`` (torch eager, and loading a trained
  checkpoint), ``onnx_predictor`` (ONNX Runtime), ``inference`` (a predictor over a dataset
  split, and its AP).
- Measurement: ``coco_inputs`` (validated COCO ground truth and detections), ``evaluation``
  (COCO bbox AP), ``latency`` (p50/p95/p99 on this machine), ``pareto`` (the AP/latency front and
  the SLA pick).
"""
