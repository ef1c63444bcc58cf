# modq: one image, four commands (modq ingest | scorer | api | notifier).
# Multi-stage: build wheels with the compilers, run from a slim image as a non-root user.
# The base is pinned by tag; pin it by digest in your registry mirror (this repo is built offline,
# where the digest cannot be looked up).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY services ./services
RUN python -m venv /opt/modq && /opt/modq/bin/pip install --no-compile . \
 && /opt/modq/bin/python -c "import services.cli"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="modq" \
      org.opencontainers.image.description="Streaming monitor of content-moderation quality"
RUN groupadd --system --gid 10001 modq && useradd --system --uid 10001 --gid modq --home-dir /home/modq --create-home modq
COPY --from=build /opt/modq /opt/modq
ENV PATH=/opt/modq/bin:$PATH PYTHONUNBUFFERED=1 MODQ_SCORER_DATA_DIR=/data
WORKDIR /home/modq
USER 10001:10001
EXPOSE 8000 8081 8082 6066
ENTRYPOINT ["modq"]
CMD ["api"]
