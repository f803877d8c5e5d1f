# syntax=docker/dockerfile:1
# pss-operator's image: one static (musl) binary in an empty image; user 65532, no shell, no
# package manager, nothing else (the operator trusts only the cluster CA its ServiceAccount mounts).
#
# One definition of the image, two ways to provide the binary; the last stage is the image either way:
#   docker build -t pss-operator:latest .       compiles it in a Rust container (BINARY=compile)
#   make image                                   compiles it on the host (musl-tools, rustup target
#                                                x86_64-unknown-linux-musl), then runs
#     buildah bud --build-arg BINARY=prebuilt -f Dockerfile DIR   where DIR holds only pss-operator
#   (buildah and BuildKit skip the stage that is not used).
ARG BINARY=compile

FROM rust:1.95-bookworm AS compile
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# The commit `--version`, the first log line and pss_build_info name (the context has no .git):
#   docker build --build-arg PSS_OPERATOR_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG PSS_OPERATOR_COMMIT=unknown
# The whole tree (see .dockerignore): Cargo.toml names test and bench targets that must exist.
# BuildKit cache mounts keep the registry and target/ between builds instead of a stub-crate dance.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --target x86_64-unknown-linux-musl --bin pss-operator \
 && strip -o /pss-operator.tmp target/x86_64-unknown-linux-musl/dist/pss-operator \
 && install -m 0755 /pss-operator.tmp /pss-operator

FROM scratch AS prebuilt
COPY pss-operator /pss-operator

FROM ${BINARY} AS binary

# The image. e2e/scripts/image.sh checks what it holds: this one file (root-owned, 0755, static),
# user 65532:65532, this entrypoint and command, no environment.
FROM scratch
COPY --from=binary /pss-operator /pss-operator
USER 65532:65532
# 8443: /metrics over HTTPS (authorized readers only); 8081: /healthz, /readyz (plain).
EXPOSE 8443 8081
ENTRYPOINT ["/pss-operator"]
CMD ["run"]
