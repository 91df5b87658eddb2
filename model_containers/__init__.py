"""The model-container runtime: wraps a user model in a gRPC server that serves batches."""
