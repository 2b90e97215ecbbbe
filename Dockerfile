# wharf with the tract backend: one static binary and the default model repository
# (PP-OCR's direction classifier) in an image with nothing else: no shell, no libc, no
# package manager; runs as a numeric non-root user.
#
#   docker build -t wharf .
#
# Where no registry is reachable (nothing to pull rust from), build the binary on the
# host and pack it:
#
#   RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
#       --no-default-features --target x86_64-unknown-linux-gnu --target-dir target/static
#   docker build --build-arg BINARY=prebuilt -t wharf .
#
# /models is the model repository: mount a volume over it to serve your own models.
ARG BINARY=build

FROM rust:1.91-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
        --no-default-features --target x86_64-unknown-linux-gnu --target-dir target/static

FROM scratch AS prebuilt
COPY target/static/x86_64-unknown-linux-gnu/release/wharf /src/target/static/x86_64-unknown-linux-gnu/release/wharf

# hadolint ignore=DL3006
FROM ${BINARY} AS binary

FROM scratch
COPY --from=binary /src/target/static/x86_64-unknown-linux-gnu/release/wharf /wharf
COPY models/ppocr_cls /models/ppocr_cls
USER 65532:65532
EXPOSE 8000 8001 8002
ENTRYPOINT ["/wharf"]
CMD ["serve", "--model-repository", "/models", "--log-format", "json"]
