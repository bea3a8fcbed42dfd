"""Remotes: push, fetch, pull and clone over object storage (S3, GCS, Azure, file://), lazy clones.

A layer beside store/: it talks to the store only through Repository's interfaces (block
locations, stored bytes, WriteSession, promised blocks). See docs/remotes.md.
"""
