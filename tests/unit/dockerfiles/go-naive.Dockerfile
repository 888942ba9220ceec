# No --platform anywhere: the compiler stage belongs to the target and runs under QEMU
FROM golang:1.22 AS build
WORKDIR /src
COPY . .
RUN go build -o /app .

FROM alpine:3.19
COPY --from=build /app /app
CMD ["/app"]
