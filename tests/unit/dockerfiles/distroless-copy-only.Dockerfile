FROM gcr.io/distroless/static-debian12:nonroot
COPY --chown=nonroot:nonroot bin/app /app
WORKDIR /data
USER nonroot
ENTRYPOINT ["/app"]
