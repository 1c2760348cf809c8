"""The core every front end shares: messages, events, images, prompts, the context window, the step format,
observations, and the agent loop that turns a prompt into one stream of typed events."""
