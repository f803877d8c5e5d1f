# syntax=docker/dockerfile:1
# pss-operator: a static (musl) binary on a distroless, non-root base.
#   docker build -t pss-operator:latest .

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, for layer caching: a dummy crate with the real manifests.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests e2e/tests \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && for f in benches/evaluate.rs tests/conformance.rs tests/check_cli.rs tests/properties.rs e2e/tests/main.rs; do echo 'fn main() {}' > "$f"; done \
 && cargo build --release --locked --target x86_64-unknown-linux-musl --bin pss-operator \
 && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --target x86_64-unknown-linux-musl --bin pss-operator \
 && cp target/x86_64-unknown-linux-musl/release/pss-operator /pss-operator

# distroless/static: no shell, no package manager, CA certificates and a nonroot user (65532).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /pss-operator /usr/local/bin/pss-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/pss-operator"]
CMD ["run"]
