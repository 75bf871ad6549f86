"""modelplane proxy: one OpenAI endpoint in front of every model."""
