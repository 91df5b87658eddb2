"""Deployers: save a model in the form a runtime loads, then build and deploy it."""
