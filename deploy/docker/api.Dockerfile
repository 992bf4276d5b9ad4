# The fleet-api image (the tenants' HTTP API; deploy/k8s runs it). Built with the repository
# root as the context:
#
#   docker build -f deploy/docker/api.Dockerfile -t gpu-fleet/api:dev .
#
# Like the scheduler, the API never links libtorch, so it needs no PyTorch: cargo builds only
# fleet-api and what it depends on, on any CPU host.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fleet-api

FROM debian:bookworm-slim
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home fleet
COPY --from=build /src/target/release/fleet-api /usr/local/bin/fleet-api
USER fleet
ENTRYPOINT ["fleet-api"]
CMD ["serve"]
