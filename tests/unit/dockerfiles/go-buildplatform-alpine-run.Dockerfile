FROM --platform=$BUILDPLATFORM golang:1.22-alpine AS build
ARG TARGETARCH
WORKDIR /src
COPY . .
RUN GOARCH=$TARGETARCH go build -o /bin/server .

FROM alpine:3.19
# this RUN belongs to the target platform: it needs the target's CPU or QEMU
RUN apk add --no-cache ca-certificates tzdata && adduser -D -u 10001 app
COPY --from=build /bin/server /usr/local/bin/server
USER app
CMD ["server"]
