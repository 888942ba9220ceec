FROM --platform=linux/amd64 vendor/sdk:5.2 AS build
COPY . /src
RUN make -C /src cross
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libusb-1.0-0
COPY --from=build /src/out/tool /usr/bin/tool
CMD ["tool"]
