"""The management service: the /admin/* REST API over the cluster state kept in Redis."""
