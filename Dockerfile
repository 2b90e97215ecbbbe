# wharf with the tract backend: one static binary and the default model repository
# (PP-OCR's direction classifier) in an image with nothing else: no shell, no libc, no
# package manager; runs as a numeric non-root user. For linux/amd64 and linux/arm64.
#
#   docker build -t wharf .
#
# Where no registry is reachable (nothing to pull rust from), build the binary on the
# host and pack it (relative relocations packed: the static-pie binary keeps its ASLR
# and sheds ~2 MB of relocation table):
#
#   cargo rustc --release --locked --no-default-features --bin wharf -- -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs
#   mkdir -p target/static && cp target/release/wharf target/static/wharf-amd64
#   docker build --build-arg BINARY=prebuilt -t wharf .
#
# Both architectures in one manifest list, from binaries built on an x86-64 host (the
# arm64 one by scripts/cross-aarch64.sh, which puts it at target/static/wharf-arm64):
# nothing runs inside the image while it is built, so no emulation is needed.
#
#   buildah build --platform linux/amd64,linux/arm64 --build-arg BINARY=prebuilt --manifest wharf .
#
# /models is the model repository: mount a volume over it to serve your own models.
ARG BINARY=build

FROM rust:1.91-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo rustc --release --locked --no-default-features --bin wharf -- -C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs \
    && mkdir -p target/static && cp target/release/wharf "target/static/wharf-$(dpkg --print-architecture)"

FROM scratch AS prebuilt
ARG TARGETARCH
COPY target/static/wharf-${TARGETARCH} /src/target/static/wharf-${TARGETARCH}

# hadolint ignore=DL3006
FROM ${BINARY} AS binary

FROM scratch
ARG TARGETARCH
COPY --from=binary /src/target/static/wharf-${TARGETARCH} /wharf
COPY models/ppocr_cls /models/ppocr_cls
USER 65532:65532
EXPOSE 8000 8001 8002
ENTRYPOINT ["/wharf"]
CMD ["serve", "--model-repository", "/models", "--log-format", "json"]
