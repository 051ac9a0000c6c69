"""Teacher backends (`base.TeacherBackend`): transformers in process, OpenAI-compatible HTTP, vLLM."""
