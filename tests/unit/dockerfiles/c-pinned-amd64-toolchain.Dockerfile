# A vendor toolchain shipped for x86-64 only: the build stage is pinned to linux/amd64
FROM --platform=linux/amd64 vendor/sdk:5.2 AS build
ARG GNU_TRIPLE
COPY . /src
RUN make -C /src CROSS_COMPILE="${GNU_TRIPLE}-"
FROM scratch
COPY --from=build /src/firmware-tool /firmware-tool
ENTRYPOINT ["/firmware-tool"]
