# A $BUILDPLATFORM stage the final stage never uses: it does not make the build cross
FROM --platform=$BUILDPLATFORM alpine:3.19 AS docs
RUN apk add --no-cache mkdocs
FROM python:3.12-slim
RUN pip install --no-cache-dir flask
CMD ["flask", "run"]
