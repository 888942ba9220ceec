# Written as many expect to work: BuildKit refuses a variable in --from
ARG BUILDER=builder
FROM --platform=$BUILDPLATFORM golang:1.22 AS builder
RUN go build -o /app .
FROM alpine:3.19
ARG BUILDER
COPY --from=${BUILDER} /app /app
CMD ["/app"]
