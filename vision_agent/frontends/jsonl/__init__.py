"""`vision-agent jsonl`: scripting through JSON lines on stdin and stdout (messages: the lines; server: the loop)."""
