"""The query frontend: POST /<app>/predict, batched over gRPC to replicas, under each app's SLO."""
