"""Comfy API v2: jobs and assets."""
