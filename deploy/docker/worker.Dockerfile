# The fleet-worker image (the `worker` and `model-publish` services of docker-compose.yml).
# Built with the repository root as the context:
#
#   docker build -f deploy/docker/worker.Dockerfile -t gpu-fleet/worker:dev .
#
# libtorch is the one inside the PyPI torch 2.11.0 wheel, as for ./fleet: tch links it and
# the binary carries an rpath to SITE/torch/lib (worker/build.rs), so the runtime stage puts
# that folder at the same path and needs no LD_LIBRARY_PATH.
#
# CUDA: the runtime is plain Debian, not an nvidia/cuda image. The torch 2.11.0 wheel pulls
# the CUDA 13.0 runtime, cuBLAS, cuDNN and NCCL as nvidia-* wheels into SITE/nvidia, and
# libtorch_cuda.so finds them through its own rpath ($ORIGIN/../../nvidia/*/lib). Only the
# driver (libcuda.so) comes from the host, mounted by the NVIDIA Container Toolkit when the
# container asks for a GPU; the host driver must support CUDA 13.0 (>= 580). A CUDA base
# image would only add a second, unused copy of the CUDA libraries.
#
# The builder's Python is Debian bookworm's 3.11, hence the python3.11 in SITE; the build
# stops with a clear message if that ever changes.

FROM rust:1-bookworm AS build
ARG TORCH_VERSION=2.11.0
ARG SITE=/opt/torch-venv/lib/python3.11/site-packages
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
# Its own layer, before the sources: the 4 GB download is redone only when the version changes.
RUN python3 -m venv /opt/torch-venv \
    && /opt/torch-venv/bin/pip install --quiet --no-cache-dir --disable-pip-version-check "torch==${TORCH_VERSION}"
RUN test -f "${SITE}/torch/lib/libtorch_cpu.so" \
    || { echo "torch is not in ${SITE}: set SITE in this Dockerfile to the venv's site-packages" >&2; exit 1; }
ENV LIBTORCH=${SITE}/torch
WORKDIR /src
COPY . .
# fleet-dev builds the reference model for the one-shot model-publish service.
RUN cargo build --release --locked -p fleet-worker -p fleet-dev

FROM debian:bookworm-slim
ARG SITE=/opt/torch-venv/lib/python3.11/site-packages
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/fleet --create-home fleet \
    && mkdir -p /var/cache/fleet/models \
    && chown fleet /var/cache/fleet/models
# Only what the binary loads: libtorch and the CUDA libraries it points at (not the Python
# half of torch, nor triton).
COPY --from=build ${SITE}/torch/lib ${SITE}/torch/lib
COPY --from=build ${SITE}/nvidia ${SITE}/nvidia
COPY --from=build /src/target/release/fleet-worker /usr/local/bin/fleet-worker
COPY --from=build /src/target/release/fleet-dev /usr/local/bin/fleet-dev
# Fails the build if any library does not resolve (no GPU needed: CUDA is only probed).
RUN fleet-worker device-info
# compute for CUDA, utility for nvidia-smi; which GPUs is the container's device request.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    FLEET_MODEL_DIR=/var/cache/fleet/models
USER fleet
ENTRYPOINT ["fleet-worker"]
CMD ["serve"]
