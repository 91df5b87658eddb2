# Prometheus from Debian's package, so no registry image is needed.
# Configured by the environment: QUERY_ADDR, ADMIN_ADDR, PROMETHEUS_PORT (see the entrypoint).
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus
COPY admin/prometheus-entrypoint.sh /usr/local/bin/prometheus-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/prometheus-entrypoint.sh"]
