# warmstart: the node agent, the loader (llmaz model-loader / KServe storage initializer) and the CLI.
#   docker build -t warmstart:0.1.0 .
# Default command: `warmstart loader` (llmaz runs the image with no command of its own).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[s3,agent]"

FROM python:3.11-slim
RUN useradd --uid 1000 --user-group --no-create-home warmstart \
 && mkdir -p /workspace/models /var/lib/warmstart && chown 1000:1000 /workspace/models
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV WARMSTART_HOME=/var/lib/warmstart PYTHONUNBUFFERED=1
# non-root by default; the agent's DaemonSet sets runAsUser: 0 where its hostPath is root-owned
USER 1000
ENTRYPOINT []
CMD ["warmstart", "loader"]
