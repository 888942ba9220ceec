FROM --platform=$BUILDPLATFORM golang:1.22
ARG TARGETARCH
COPY . /src
RUN cd /src && GOARCH=$TARGETARCH go build -o /app
FROM scratch
COPY --from=0 /app /app
ENTRYPOINT ["/app"]
