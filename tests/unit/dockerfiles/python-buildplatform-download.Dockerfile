# pip downloads the target's manylinux wheels on the build machine; nothing runs on the target
FROM --platform=$BUILDPLATFORM python:3.12 AS deps
ARG TARGETARCH
COPY requirements.txt .
RUN case "$TARGETARCH" in amd64) P=x86_64;; arm64) P=aarch64;; *) P=$TARGETARCH;; esac && \
    pip install --no-deps --only-binary=:all: --platform "manylinux2014_$P" --target /deps -r requirements.txt
FROM python:3.12-slim
COPY --from=deps /deps /usr/local/lib/python3.12/site-packages
COPY app.py /app.py
CMD ["python", "/app.py"]
