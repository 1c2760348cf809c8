"""The llama.cpp backend: loading (load, log), prompt formatting (chat_format), prompt evaluation with KV and
image-embedding reuse (prompt_eval, caches, answer_tokens), text that stays text (special_text), and the
token loop. `backend.LlamaCppBackend` ties them together.

Nothing is imported here: importing a helper module must not load llama_cpp.
"""
