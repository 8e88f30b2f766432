"""The model over HTTP: ``mlpipeline-serve`` (``serve``), its routes (``app``), the micro-batching
of concurrent requests (``batcher``) and the upload page (``page.html``), on ONNX Runtime alone:
nothing here imports torch, so a serving machine or container installs none.

May import: core, ingestion, modeling, versions.
"""
