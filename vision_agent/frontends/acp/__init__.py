"""`vision-agent acp`: an Agent Client Protocol agent over stdio (rpc: JSON-RPC framing; updates: events as
session updates; agent: the methods; server: the command)."""
