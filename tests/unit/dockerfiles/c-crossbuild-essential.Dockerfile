FROM --platform=$BUILDPLATFORM debian:bookworm AS build
ARG GNU_TRIPLE
RUN apt-get update && apt-get install -y --no-install-recommends make "gcc-${GNU_TRIPLE}" "libc6-dev-${TARGETARCH}-cross"
COPY . /src
RUN make -C /src CC="${GNU_TRIPLE}-gcc" LDFLAGS=-static
FROM busybox:1.36-musl
COPY --from=build /src/app /bin/app
CMD ["app"]
