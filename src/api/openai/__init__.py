"""The OpenAI face: chat completions, completions, embeddings, models, the Responses API."""
