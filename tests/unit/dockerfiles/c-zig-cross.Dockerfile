ARG REGISTRY=127.0.0.1:5000
ARG TOOLCHAIN=${REGISTRY}/archfleet/zig:0.14.1
ARG BASE=${REGISTRY}/archfleet/busybox:latest
FROM --platform=$BUILDPLATFORM ${TOOLCHAIN} AS build
ARG ZIG_TARGET
ARG ZIG_CPU=baseline
WORKDIR /src
COPY hello.c .
RUN --mount=type=cache,target=/zig-cache zig cc -target "$ZIG_TARGET" -mcpu="$ZIG_CPU" -O2 -static -o /hello hello.c
FROM ${BASE}
COPY --from=build /hello /bin/hello
CMD ["hello"]
