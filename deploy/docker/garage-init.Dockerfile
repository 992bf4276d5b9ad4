# The garage-init one-shot of docker-compose.yml: the garage CLI plus a shell and curl. The
# garage image itself is only the static binary (FROM scratch), so a script cannot run in it.
# Built with deploy/docker/ as the context.
ARG GARAGE_IMAGE=dxflrs/garage:v2.4.1
FROM ${GARAGE_IMAGE} AS garage

FROM debian:bookworm-slim
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=garage /garage /usr/local/bin/garage
COPY garage-init.sh /usr/local/bin/garage-init
ENTRYPOINT ["garage-init"]
