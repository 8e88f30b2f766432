"""The Hugging Face layout of a transformers arch's model folder, beside ``model.json``.

A model trained on a transformers arch is saved so that ``transformers`` alone loads it:
``AutoModelForImageClassification.from_pretrained("models/")`` reads ``config.json`` (the
network's full config with ``id2label``/``label2id``) and ``model.safetensors`` (the
transformers model's own tensor names, no ``net.`` prefix of the pipeline's wrapper), and
``AutoImageProcessor.from_pretrained("models/")`` reads ``preprocessor_config.json``: the
preprocessing evaluation applied, so ``processor(image)`` then the model gives evaluate's logits.

That preprocessing is resize to the stored size with ingest's resampling, then ``x / 255``, then
``(x - mean) / std`` per channel, which is exactly what ``ViTImageProcessor`` does; it is named
for every arch, since the processor a model type usually comes with does other things (ResNet's
and ConvNeXt's crop a centre after resizing to a larger size). A model trained on
``train.image_size`` windows is evaluated on the centre window of the stored image, and an
``ingest.resize: shorter-side`` image is the centre of the image scaled to cover the stored
size: then the processor is a ``CLIPImageProcessor`` (resize, centre crop, rescale, normalize),
``crop_size`` the window, resizing the shorter side for a square ``shorter-side`` size. Two
things no processor does are left to ``squash``'s resize: ``pad``'s borders and
``shorter-side`` to a size that is not square (the pipeline's own predict and server repeat them
exactly). Those, and what else no processor can say (how ingest converts other pixel modes, the
background of transparent pixels, the JPEG draft decoding), ride along under
``mlpipeline_preprocessing``, ingest's own record, which processors keep as an attribute and
ignore.

The built-in CNN keeps its two files: no transformers class builds it, and ``from_pretrained``
would have to import code shipped beside the weights to do so (an ``auto_map``), which is what
this project refuses to run. Its portable form is the ONNX file of the export stage. No torch or
transformers here: the texts are plain JSON from ``model.json``.
"""

from __future__ import annotations

from typing import Any

from mlpipeline.core import atomic
from mlpipeline.ingestion.images import RESAMPLING
from mlpipeline.modeling.config import ModelConfig

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_TYPE = "ViTImageProcessor"  # resize to a size, rescale, normalize: nothing else
CROPPING_TYPE = "CLIPImageProcessor"  # the same with a centre crop after resizing
RESCALE_FACTOR = 1 / 255  # uint8 pixels to [0, 1], as the network's first step


def hub_files(config: ModelConfig, architecture: str) -> dict[str, str]:
    """``config.json`` and ``preprocessor_config.json`` of a transformers arch's ``config``, whose
    model class is ``architecture`` (``ResNetForImageClassification``), as file name -> text."""
    assert config.network is not None  # a transformers arch: ModelConfig checks it
    return {
        CONFIG_FILE: atomic.to_json_text({**config.network, "architectures": [architecture]}),
        PREPROCESSOR_FILE: atomic.to_json_text(preprocessor_config(config)),
    }


def preprocessor_config(config: ModelConfig) -> dict[str, Any]:
    """The image processor settings that reproduce evaluation's input from an image file."""
    made = config.input_preprocessing()
    height, width = made.image_size
    covers = made.resize == "shorter-side" and height == width  # a processor's shortest_edge resize
    crop = covers or config.image_shape[1:] != [height, width]
    window = dict(zip(("height", "width"), config.image_shape[1:], strict=True))
    return {
        "image_processor_type": CROPPING_TYPE if crop else PROCESSOR_TYPE,
        "do_resize": True,
        "size": {"shortest_edge": height} if covers else {"height": height, "width": width},
        "resample": int(RESAMPLING[made.resample]),
        **({"do_center_crop": True, "crop_size": window} if crop else {}),
        "do_rescale": True,
        "rescale_factor": RESCALE_FACTOR,
        "do_normalize": True,
        "image_mean": list(config.mean),
        "image_std": list(config.std),
        "do_convert_rgb": made.channels == 3,
        "mlpipeline_preprocessing": made.to_json(),
    }
