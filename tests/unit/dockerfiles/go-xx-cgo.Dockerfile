FROM --platform=$BUILDPLATFORM tonistiigi/xx AS xx
FROM --platform=$BUILDPLATFORM golang:alpine AS build
RUN apk add clang lld
COPY --from=xx / /
ARG TARGETPLATFORM
# xx-apk installs the target's libraries into a sysroot; it runs on the build machine
RUN xx-apk add musl-dev gcc sqlite-dev
ENV CGO_ENABLED=1
WORKDIR /src
COPY . .
RUN xx-go build -ldflags '-extldflags -static' -o /app . && xx-verify --static /app

FROM alpine
COPY --from=build /app /usr/bin/app
ENTRYPOINT ["app"]
