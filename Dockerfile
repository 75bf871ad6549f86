# modelplane itself (the controller and the OpenAI proxy), not a model server: the models run in
# their own containers, which modelplane starts on the host's docker daemon.
#
#   docker build -t modelplane .
#   docker run -d --name modelplane --restart unless-stopped --init \
#     --network host \
#     --gpus all \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     --group-add "$(stat -c %g /var/run/docker.sock)" \
#     -v /var/lib/modelplane:/var/lib/modelplane \
#     -v /srv/box-manifests:/manifests:ro \
#     modelplane
#
# What each flag is for:
#   --network host   the backends listen on 127.0.0.1:<port> of the host (docker runtime, host
#                    networking) and modelplane must reach them there; the proxy's own listen
#                    address (Node spec.listen, default 127.0.0.1:8400) is then the host's too.
#   --gpus all       NVML inside this container, for the GPU inventory and placement (needs the
#                    NVIDIA Container Toolkit; `--runtime nvidia` on older setups). Without it
#                    modelplane sees no GPUs. The model containers get their GPUs themselves.
#   docker.sock      modelplane starts model containers as siblings on the host daemon.
#   --group-add      the socket is root:docker 0660 and this image runs as a non-root user
#                    (uid 10001); this adds the host's docker group id. Access to the socket is
#                    root-equivalent on the host.
#   /var/lib/modelplane  state (SQLite, the pull-mode git clone) and the Hugging Face cache
#                    (Node spec.cacheDir: /var/lib/modelplane/hf). Mount it at the SAME path as on
#                    the host: model containers are started by the host daemon, which resolves
#                    their bind mounts of the cache on the host. Make it writable for uid 10001
#                    (sudo install -d -o 10001 -g 10001 /var/lib/modelplane) or run with
#                    --user "$(id -u):$(id -g)".
#   /manifests       the manifests (read-only is fine); or use pull mode (Node spec.git).
#   --init           reaps stray child processes (git, ssh) since modelplane runs as PID 1.
# Environment worth passing with -e: HF_TOKEN, HF_ENDPOINT (a mirror), HF_HUB_OFFLINE=1.
#
# The process runtime inside this image only runs what the image contains (no engines here):
# use the docker runtime, or build FROM this image and add an engine.

# --- builder: wheels for modelplane and its dependencies, installed into a venv --------------
FROM python:3.11-slim AS builder
WORKDIR /src
# the context is only pyproject.toml, README.md, LICENSE and the packages (see .dockerignore)
COPY . .
# --no-index: the venv gets exactly the wheels built here; --without-pip keeps pip out of it
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/modelplane \
    && pip --python /opt/modelplane/bin/python install --no-cache-dir --no-index \
        --find-links /wheels modelplane

# --- final: the runtime only, no build tools --------------------------------------------------
FROM python:3.11-slim
# git: commit info of the manifests and pull mode; openssh-client: pull mode over ssh.
# safe.directory: the mounted /manifests repository belongs to a host user, not to uid 10001, and
# git refuses to read a repository of another owner unless it is listed.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && git config --system --add safe.directory /manifests
RUN useradd --system --uid 10001 --user-group --create-home \
        --home-dir /var/lib/modelplane --shell /usr/sbin/nologin modelplane
# the same base image in both stages, so the venv's python link stays valid
COPY --from=builder /opt/modelplane /opt/modelplane
# MODELPLANE_STATE_DIR: the volume (a non-root user would otherwise get ~/.local/state/modelplane)
ENV PATH=/opt/modelplane/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MODELPLANE_STATE_DIR=/var/lib/modelplane
USER modelplane
WORKDIR /var/lib/modelplane
VOLUME ["/var/lib/modelplane"]
EXPOSE 8400
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(os.environ.get('MODELPLANE_HEALTH_URL', 'http://127.0.0.1:8400/healthz'), timeout=4)"
ENTRYPOINT ["modelplane"]
CMD ["run", "/manifests"]
