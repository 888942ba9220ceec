# The final stage chosen by a build arg: FROM final-${VARIANT}
ARG VARIANT=slim
FROM --platform=$BUILDPLATFORM golang:1.22 AS build
ARG TARGETARCH
COPY . /src
RUN cd /src && GOARCH=$TARGETARCH go build -o /app
FROM debian:bookworm-slim AS final-slim
FROM debian:bookworm AS final-full
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates git
FROM final-${VARIANT}
COPY --from=build /app /usr/local/bin/app
CMD ["app"]
