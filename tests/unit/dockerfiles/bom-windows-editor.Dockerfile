FROM --platform=$BUILDPLATFORM golang:1.22 AS build
ARG TARGETARCH
COPY . /src
RUN cd /src && GOARCH=$TARGETARCH go build -o /app
FROM scratch
COPY --from=build /app /app
ENTRYPOINT ["/app"]
