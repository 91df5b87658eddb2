"""Generated gRPC code for the frontend-to-replica RPC (see protos/model.proto)."""
