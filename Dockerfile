# ftbridge: the bridge daemon in a container.
#
#   docker build -t ftbridge .
#   docker run -e OPENAI_API_KEY -e WANDB_API_KEY -e WANDB_PROJECT=fine-tunes \
#     -v ftbridge-state:/var/lib/ftbridge -p 9464:9464 ftbridge
#
# No secret is baked in: keys come from the environment (or a mounted TOML file named by
# FTBRIDGE_CONFIG). State (the SQLite file, W&B's run folders) lives in the volume.

ARG PYTHON_VERSION=3.12

# Build: a virtual environment with ftbridge and its dependencies, nothing else.
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/ftbridge
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN /opt/ftbridge/bin/pip install --no-cache-dir .

# Run: slim Python, the venv, a non-root user, the state directory as a volume.
FROM python:${PYTHON_VERSION}-slim-bookworm
# openai's HTTP client uses the system's trust store.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 ftbridge \
    && useradd --system --uid 10001 --gid ftbridge --home-dir /var/lib/ftbridge \
       --shell /usr/sbin/nologin ftbridge \
    && mkdir -p /var/lib/ftbridge \
    && chown ftbridge:ftbridge /var/lib/ftbridge
COPY --from=build /opt/ftbridge /opt/ftbridge
ENV PATH=/opt/ftbridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/ftbridge \
    FTBRIDGE_DATABASE_URL=sqlite:////var/lib/ftbridge/ftbridge.db \
    WANDB_DIR=/var/lib/ftbridge \
    FTBRIDGE_HTTP_HOST=0.0.0.0 \
    FTBRIDGE_HTTP_PORT=9464 \
    FTBRIDGE_LOG_FORMAT=json \
    FTBRIDGE_SHUTDOWN_TIMEOUT=25
VOLUME ["/var/lib/ftbridge"]
WORKDIR /var/lib/ftbridge
USER 10001:10001
EXPOSE 9464
# SIGTERM finishes every open W&B run and exits within FTBRIDGE_SHUTDOWN_TIMEOUT (25 s),
# inside Kubernetes' default 30 s grace period.
STOPSIGNAL SIGTERM
# GET /readyz on FTBRIDGE_HTTP_PORT (the light probe: it does not import wandb or openai).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bridge.health"]
ENTRYPOINT ["ftbridge"]
CMD ["run"]
