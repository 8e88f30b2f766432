"""The model: the network (``network``: the built-in CNN; ``hf``: transformers archs, checked
before training by ``hf_overrides`` (the per-arch overrides), ``hf_size`` (the parameter bound)
and ``hf_build`` (a trial build and forward); both fed through ``inputs``; ``pretrained``: a
weights folder read as data, never as code; ``finetune``: a released version to start from), its
config (``config``: ``model.json``) and files on disk (``files``: safetensors + JSON, with the
Hugging Face layout of ``hub_layout``), batched inference (``inference``), the ONNX form
(``export``, run by ``onnx_model``) with the export stage's params (``params``), and the
``predict`` command line (``predict``: ``mlpipeline-predict``, reading ``predict_inputs``,
scoring through ``scoring``, writing ``predict_output``).

May import: core, ingestion, versions.
"""
