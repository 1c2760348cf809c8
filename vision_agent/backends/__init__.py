"""Model backends: the protocol (base), the factory, the scripted replay backend and the llama.cpp one."""
