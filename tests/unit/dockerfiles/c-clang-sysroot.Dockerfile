FROM --platform=$BUILDPLATFORM debian:bookworm AS build
ARG TARGETARCH
ARG CLANG_TARGET
RUN dpkg --add-architecture "$TARGETARCH" && apt-get update && \
    apt-get install -y clang lld "libc6-dev:$TARGETARCH"
COPY main.c /src/main.c
RUN clang --target="$CLANG_TARGET" -fuse-ld=lld -O2 -o /out/app /src/main.c
FROM debian:bookworm-slim
COPY --from=build /out/app /usr/bin/app
CMD ["app"]
