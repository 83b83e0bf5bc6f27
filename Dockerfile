# The tripflow pipeline image: the code, its locked dependencies, nothing else.
#
#   docker build -t tripflow:0.1.0 .
#
# The worker starts the flow run with `args: [prefect, flow-run, execute]` and never overrides the
# command, so the image has no ENTRYPOINT and `prefect` must be on PATH. It runs as a fixed
# non-root UID (10001, matching work_pools/kubernetes.json) with a read-only root filesystem:
# the only writable places are the emptyDirs the Job mounts at /tmp and /home/tripflow.

FROM python:3.11-slim AS build
COPY --from=ghcr.io/astral-sh/uv:0.13.8 /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
WORKDIR /app
# Dependencies first (cached while only the code changes), then the project itself.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY flows ./flows
COPY tasks ./tasks
RUN uv sync --frozen --no-dev

FROM python:3.11-slim
RUN groupadd --system --gid 10001 tripflow \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/tripflow --create-home \
      --shell /usr/sbin/nologin tripflow
# Owned by root, read-only for the pipeline user.
COPY --from=build /app /app
WORKDIR /app
ENV PATH=/app/.venv/bin:$PATH \
    HOME=/home/tripflow \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PREFECT_HOME=/home/tripflow/.prefect \
    TRIPFLOW_STAGING=/home/tripflow/.tripflow/staging \
    TRIPFLOW_WAREHOUSE=duckdb:/home/tripflow/.tripflow/warehouse.duckdb \
    TRIPFLOW_PII_KEY_FILE=/home/tripflow/.tripflow/pii.key \
    TRIPFLOW_LOCAL_SERVER=0
USER 10001:10001
