"""One request's path: preprocess inputs, submit, await completion, collect and deliver outputs."""
