# mlpipeline-serve in a container: the model over HTTP on ONNX Runtime, with no torch, DVC or
# transformers in the image (a few hundred MB, not several GB). Build it from the repository root
# with the ONNX file to serve: exported/model.onnx after `dvc repro` (or `dvc pull export`), or a
# release's, fetched once by `mlpipeline-predict --onnx --model image-classifier@v1.2.0 ...` into
# .cache/models/image-classifier/v1.2.0-onnx/model.onnx:
#
#   docker build -f docker/serve.Dockerfile -t image-classifier:dev .
#   docker build -f docker/serve.Dockerfile \
#       --build-arg MODEL=.cache/models/image-classifier/v1.2.0-onnx/model.onnx -t image-classifier:v1.2.0 .
#   docker run --rm -p 8000:8000 image-classifier:v1.2.0      # then http://localhost:8000/
#
# Tuning goes on the command line: docker run ... image-classifier:v1.2.0 --threads 4 --max-batch 32
# (docs/serving.md lists the options). tests/test_dockerfile.py checks this file's commands.
FROM python:3.11-slim

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY src ./src
# What the server imports, at the versions constraints.txt pins; then the package itself without
# the pipeline's dependencies.
RUN pip install --no-cache-dir -c constraints.txt aiohttp numpy onnxruntime pillow pydantic \
    && pip install --no-cache-dir --no-deps .

ARG MODEL=exported/model.onnx
COPY ${MODEL} /model/model.onnx

RUN useradd --create-home serve
USER serve
EXPOSE 8000
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"]
ENTRYPOINT ["mlpipeline-serve", "--onnx", "/model/model.onnx", "--host", "0.0.0.0", "--port", "8000"]
