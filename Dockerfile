# One image with both binaries: `live` (the node agent, the coordinator `live run`, the demo)
# and `sim` (sweeps, evaluation, calibration, plots). The manifests in deploy/ run it.
#
#   docker build -t REGISTRY/autothrottle-rs:VERSION .
#   docker push REGISTRY/autothrottle-rs:VERSION
#
# then set that image in deploy/agent-daemonset.yaml, deploy/coordinator-job.yaml and
# deploy/sweep-job.yaml (they name autothrottle-rs:latest).

# The workspace's minimum Rust (rust-version in Cargo.toml).
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
# --locked: the image holds exactly the versions Cargo.lock names.
RUN cargo build --release --locked -p live -p sim \
 && cp target/release/live target/release/sim /usr/local/bin/

FROM debian:bookworm-slim
# Plots need a TrueType font they can find; the coordinator may talk TLS to agents.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fonts-dejavu-core ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/live /usr/local/bin/sim /usr/local/bin/
# The agent runs as root (it writes other containers' cgroups; its pod is privileged); the
# coordinator and sim need no privilege (deploy/coordinator-job.yaml runs them as a user).
WORKDIR /work
CMD ["live", "--help"]
