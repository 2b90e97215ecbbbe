# wharf with the tract backend: one static binary and the default model repository
# (PP-OCR's direction classifier) in an image with nothing else: no shell, no libc, no
# package manager; runs as a numeric non-root user.
#
#   docker build -t wharf .
#
# Where no registry is reachable (nothing to pull rust from), build the binary on the
# host and pack it (relative relocations packed: the static-pie binary keeps its ASLR
# and sheds ~2 MB of relocation table):
#
#   cargo rustc --release --locked --no-default-features --bin wharf -- -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs
#   mkdir -p target/static && cp target/release/wharf target/static/wharf
#   docker build --build-arg BINARY=prebuilt -t wharf .
#
# /models is the model repository: mount a volume over it to serve your own models.
ARG BINARY=build

FROM rust:1.91-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo rustc --release --locked --no-default-features --bin wharf -- -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs \
    && mkdir -p target/static && cp target/release/wharf target/static/wharf

FROM scratch AS prebuilt
COPY target/static/wharf /src/target/static/wharf

# hadolint ignore=DL3006
FROM ${BINARY} AS binary

FROM scratch
COPY --from=binary /src/target/static/wharf /wharf
COPY models/ppocr_cls /models/ppocr_cls
USER 65532:65532
EXPOSE 8000 8001 8002
ENTRYPOINT ["/wharf"]
CMD ["serve", "--model-repository", "/models", "--log-format", "json"]
