# Redis from Debian's package, so no registry image is needed. State goes to /data.
# REDIS_PORT and REDIS_BIND configure it.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data
VOLUME /data
CMD redis-server --port "${REDIS_PORT:-6379}" --bind "${REDIS_BIND:-127.0.0.1}" --dir /data \
    --appendonly yes --appendfsync everysec --save "" --notify-keyspace-events Ex
