"""HTTP routes: validate with pydantic, hand the work to the pipeline, shape the response."""
