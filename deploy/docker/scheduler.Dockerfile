# The fleet-scheduler image (the `scheduler` service of docker-compose.yml). Built with the
# repository root as the context:
#
#   docker build -f deploy/docker/scheduler.Dockerfile -t gpu-fleet/scheduler:dev .
#
# The control plane never links libtorch, so unlike the worker this needs no PyTorch: cargo
# builds only fleet-scheduler and what it depends on, on any CPU host.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fleet-scheduler

FROM debian:bookworm-slim
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home fleet
COPY --from=build /src/target/release/fleet-scheduler /usr/local/bin/fleet-scheduler
USER fleet
ENTRYPOINT ["fleet-scheduler"]
