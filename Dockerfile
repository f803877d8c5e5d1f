# syntax=docker/dockerfile:1
# pss-operator: a static (musl) binary on a distroless, non-root base.
#   docker build -t pss-operator:latest .

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# The whole tree (see .dockerignore): Cargo.toml names test and bench targets that must exist.
# BuildKit cache mounts keep the registry and target/ between builds instead of a stub-crate dance.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin pss-operator \
 && cp target/x86_64-unknown-linux-musl/release/pss-operator /pss-operator

# distroless/static: no shell, no package manager, CA certificates, user nonroot (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /pss-operator /usr/local/bin/pss-operator
USER 65532:65532
# 8443: /metrics over HTTPS (authorized readers only); 8081: /healthz, /readyz (plain).
EXPOSE 8443 8081
ENTRYPOINT ["/usr/local/bin/pss-operator"]
CMD ["run"]
