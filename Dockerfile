# One image for the search API and the UI. CPU torch by default; for a GPU build pass
#   --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 --build-arg TORCH_VERSION=2.6.0
# and run the api service with `gpus: all` (see README "Scaling out").
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models \
    IMGSEARCH_HOST=0.0.0.0 \
    IMGSEARCH_MILVUS_URI=/data/milvus.db \
    IMGSEARCH_THUMBNAIL_DIR=/cache/thumbnails \
    IMGSEARCH_CACHE_DIR=/cache/model

WORKDIR /app
RUN pip install --index-url ${TORCH_INDEX} "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY imgsearch ./imgsearch
COPY indexer ./indexer
COPY search_api ./search_api
COPY ui ./ui
COPY evaluation ./evaluation
RUN pip install '.[ocr]'

RUN useradd --create-home --uid 1000 imgsearch && mkdir -p /models /cache /data && chown imgsearch /models /cache /data
USER imgsearch
EXPOSE 8000 8501
CMD ["imgsearch", "serve"]
