"""The Anthropic Messages API face: `/v1/messages` and its token count."""
