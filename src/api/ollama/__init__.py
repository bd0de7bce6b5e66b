"""The Ollama API face: `/api/*` (and Ollama's answer at `/`)."""
