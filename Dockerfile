# syntax=docker/dockerfile:1.7
# dyups-syncer container image.
#
#   docker build -t dyups-syncer:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# Needs BuildKit (the default builder since Docker 23): the final stage installs
# from the build stage's wheels through a bind mount, so no wheel, cache or
# compiler is left in any layer.

# One pinned base for both stages (official Debian slim Python).
FROM python:3.12.8-slim-bookworm AS base

# ---------------------------------------------------------------------------
# Build: the wheel of dyups-syncer and wheels of all its dependencies (with
# the Kubernetes and Consul extras, so one image serves every source type).
FROM base AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY syncer ./syncer
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[kubernetes,consul]'

# ---------------------------------------------------------------------------
# Runtime: a virtualenv holding only the installed packages.
FROM base AS runtime

# Keep VERSION equal to pyproject.toml's version (tests/deploy checks it).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="dyups-syncer" \
      org.opencontainers.image.description="Keeps nginx dyups upstreams in step with service discovery (file, Kubernetes, Consul)." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12.8-slim-bookworm"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# The venv gets no pip of its own (--without-pip): the base image's pip installs
# into it, from the build stage's wheels only (--no-index), and keeps no cache.
# Bytecode is compiled at install time, so a read-only root filesystem is fine.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
        --find-links /wheels "dyups-syncer[kubernetes,consul]==${VERSION}" \
 && groupadd --system --gid 10001 dyups-syncer \
 && useradd --system --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin dyups-syncer \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/dyups-syncer \
 && install -d -m 0755 /etc/dyups-syncer \
 && dyups-syncer --version

# The snapshot lives on a volume (an emptyDir or a PVC in Kubernetes), so the
# root filesystem can be mounted read-only. The configuration is mounted at
# /etc/dyups-syncer/config.yaml (a ConfigMap in Kubernetes).
VOLUME ["/var/lib/dyups-syncer"]
WORKDIR /var/lib/dyups-syncer
# /metrics, /healthz, /readyz, /state (set `listen: 0.0.0.0:9105` in the config).
EXPOSE 9105
USER 10001:10001
ENTRYPOINT ["dyups-syncer"]
CMD ["run", "-c", "/etc/dyups-syncer/config.yaml"]
