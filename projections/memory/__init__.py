"""Vector episodic memory: episodes in Chroma, recalled by situation similarity.

- :mod:`.embedding` — the offline sentence-embedding model (explicit Chroma embedding function)
- :mod:`.store` — the Chroma adapter (embedded PersistentClient or a Chroma server)
- :mod:`.projection` — ``agent-episodes`` -> store, for the projection runner
- :mod:`.recall` — ``recall(text, k, agent, tool, outcome, since)`` -> plain dataclasses

Importing this package loads neither torch nor chromadb; the submodules do.
"""
