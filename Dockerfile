# syntax=docker/dockerfile:1
# openmeter-reconciler container image.
#   docker build -t ghcr.io/openmeter-reconciler/openmeter-reconciler:0.1.0 .
# Stage 1 builds wheels (the project and every dependency); stage 2 installs them into a clean
# python:3.11-slim without compilers, caches or the wheels themselves.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
# The project wheel plus wheels of all runtime dependencies, resolved from pyproject.toml.
RUN pip wheel --wheel-dir /wheels . \
 && mkdir -p /src/config

FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The wheels are bind-mounted from the builder for this one step, so none stays in a layer; pip
# itself is removed afterwards (nothing installs packages at run time).
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels openmeter-reconciler \
 && pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 10001 reconciler \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin reconciler \
 && mkdir -p /data /run/secrets/reconciler /etc/reconciler \
 && chown 10001:10001 /data
COPY --from=builder --chown=0:0 /src/config /app/config
WORKDIR /app
USER 10001:10001
EXPOSE 8080
VOLUME ["/data"]
ENTRYPOINT ["reconciler"]
CMD ["run"]
