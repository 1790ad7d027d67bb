# The touchstream binary (collector, processor, migrate, topics) in a slim image.
# Built by docker-compose.yml; the release profile uses thin LTO and one codegen unit.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release -p touchstream

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/touchstream /usr/local/bin/touchstream
COPY deploy/funnels.toml deploy/catalog.toml /etc/touchstream/
COPY deploy/docker/touchstream.toml /etc/touchstream/touchstream.toml
ENV TOUCHSTREAM_CONFIG=/etc/touchstream/touchstream.toml
USER nobody
ENTRYPOINT ["touchstream"]
