# Prometheus from Debian's package. The config comes in at /etc/prometheus/prometheus.yml.
FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus
COPY admin/prometheus.yml /etc/prometheus/prometheus.yml
ENTRYPOINT ["prometheus", "--storage.tsdb.path=/prometheus", "--web.enable-lifecycle"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--web.listen-address=0.0.0.0:9090"]
