# The build stage is only a mount source: the final stage's RUN still runs on the target
FROM --platform=$BUILDPLATFORM golang:1.22 AS src
COPY . /go/src/app
FROM alpine:3.19
RUN --mount=type=bind,from=src,source=/go/src/app,target=/src \
    apk add --no-cache go && cd /src && go build -o /usr/bin/app .
CMD ["app"]
