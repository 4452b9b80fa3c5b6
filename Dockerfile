# shardgate image: the `shardgate` binary on Debian slim, running as uid 10001.
#
#   docker build -t shardgate:dev .
#   docker run --rm -p 6432:6432 -p 9930:9930 \
#     -v "$PWD/shardgate.toml:/etc/shardgate/shardgate.toml:ro" shardgate:dev
#
# The config must listen on 0.0.0.0 (listen.addr, admin.listen) to be reachable from outside
# the container. deploy/kubernetes/ has sidecar and shared-tier manifests using this image.
# The cache mounts need BuildKit (Docker's default builder since 23.0; DOCKER_BUILDKIT=1 before).

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src
# No debug info in the shipped binary (the workspace's release profile keeps line tables for
# profiling; symbol names stay, so panics still print readable backtraces).
ENV CARGO_PROFILE_RELEASE_DEBUG=0
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p shardgate-proxy \
    && install -D -m 0755 target/release/shardgate /out/shardgate

# ---- runtime -----------------------------------------------------------------------------
# Debian slim rather than distroless: the Kubernetes examples use its /bin/sh to assemble the
# config from a ConfigMap and a Secret, and `sleep` in the preStop hook. The binary links only
# glibc (TLS and SCRAM use ring), so the builder and runtime share Debian 12 (bookworm).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 shardgate \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin shardgate
COPY --from=build /out/shardgate /usr/local/bin/shardgate
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# 6432: PostgreSQL clients (listen.addr); 9930: admin API, /health, /ready, /metrics
# (admin.listen).
EXPOSE 6432 9930
ENTRYPOINT ["shardgate", "serve", "--config", "/etc/shardgate/shardgate.toml"]
