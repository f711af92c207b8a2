# One image for both entrypoints: `millrace-worker` (the default command, what Dataflow pods
# run) and `millrace-operator`. Non-root, and it runs with a read-only root filesystem: the
# worker writes only to its mounted volumes (/tmp, /var/run/millrace, the recovery volume).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY operator ./operator
COPY crds ./crds
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator,kafka]"

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels "millrace[operator,kafka]" && rm -rf /wheels \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent millrace
USER 10001:10001
WORKDIR /tmp
CMD ["millrace-worker"]
