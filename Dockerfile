# syntax=docker/dockerfile:1
# energy2mqtt container image.
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t energy2mqtt:0.1.0 .
#
# The build stage runs on the target platform (QEMU under buildx for the
# other architectures): slower than cross-compiling, but it builds exactly
# what CI builds and tests, with the same `cargo build --release --locked`.
# On a Raspberry Pi, `docker build .` builds natively.

# The toolchain CI uses (see .ci/run); the crate needs Rust >= 1.87.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Cargo needs every target the manifest declares (benches, tests) to exist;
# config/demo.toml is compiled into the binary.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY config ./config
COPY tests ./tests
# D-Bus (for BlueZ) is compiled from source by the `dbus` crate (feature
# `vendored`), so no -dev packages are needed beyond the image's gcc. The
# cache mounts keep the registry and the build between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -D -m 0755 target/release/energy2mqtt /out/energy2mqtt \
    && install -D -m 0755 target/release/energy2mqtt-push /out/energy2mqtt-push

FROM debian:bookworm-slim AS runtime
# ca-certificates: the system roots for mqtts:// brokers without
# mqtt.ca_file; unpinned because it must follow Debian's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 energy2mqtt \
    && useradd --system --uid 10001 --gid energy2mqtt --home-dir /data --shell /usr/sbin/nologin energy2mqtt \
    && install -d -o energy2mqtt -g energy2mqtt -m 0750 /data /config
# The notification sidecar comes along: `--entrypoint energy2mqtt-push`
# runs it from the same image (docs/NOTIFICATIONS.md).
COPY --from=build /out/energy2mqtt /out/energy2mqtt-push /usr/local/bin/
COPY config/energy2mqtt.example.toml /usr/share/energy2mqtt/energy2mqtt.example.toml

# State (energy counters, control.json, health.json) lives in /data; the
# configuration (and secret files) come from /config.
ENV E2M_STORAGE__DIR=/data \
    E2M_CONFIG=/config/energy2mqtt.toml
VOLUME ["/data", "/config"]
USER energy2mqtt:energy2mqtt
WORKDIR /data

# Healthy means: the bridge runs and is connected to its broker (it keeps
# /data/health.json up to date when that changes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/energy2mqtt", "health"]

ENTRYPOINT ["/usr/local/bin/energy2mqtt"]
CMD ["run", "--config", "/config/energy2mqtt.toml"]
