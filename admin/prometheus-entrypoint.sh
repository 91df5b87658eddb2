#!/bin/sh
# Writes Prometheus's config for this cluster from the environment, then runs Prometheus:
# the query frontend is scraped at QUERY_ADDR, and every model replica the management service
# at ADMIN_ADDR lists (HTTP service discovery over the replicas registered in Redis).
set -eu
cat > /etc/prometheus/cluster.yml <<YAML
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: query-frontend
    metrics_path: /prometheus
    static_configs:
      - targets: ["${QUERY_ADDR:-127.0.0.1:1337}"]
  - job_name: model-containers
    http_sd_configs:
      - url: http://${ADMIN_ADDR:-127.0.0.1:1338}/admin/prometheus_targets
        refresh_interval: 5s
YAML
exec prometheus --config.file=/etc/prometheus/cluster.yml --storage.tsdb.path=/prometheus \
  --web.enable-lifecycle --web.listen-address="0.0.0.0:${PROMETHEUS_PORT:-9090}" "$@"
