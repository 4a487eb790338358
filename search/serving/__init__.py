"""Serving an exported model over HTTP (Ray Serve) with its web page."""
