# Redis from Debian's package, so no registry image is needed. State goes to /data.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data
VOLUME /data
CMD ["redis-server", "--port", "6379", "--dir", "/data", "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--notify-keyspace-events", "Ex", "--protected-mode", "no"]
