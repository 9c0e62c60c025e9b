"""Interchange with other libraries' model formats (diffusers pipelines: `interop.diffusers`)."""
