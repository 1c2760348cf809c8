"""Models on disk: the catalog and `-m` resolution (catalog), downloads (hub), the generated demo pair
(demo_model), and bounded reading and checking of GGUF files (gguf_reader, gguf_rules, gguf_info).

The catalog's names are importable from here: `from vision_agent.catalog import resolve_model`.
"""

from vision_agent.catalog.catalog import (
    CatalogEntry,
    ResolvedModel,
    entry_dir,
    find_mmproj_beside,
    installed_files,
    load_catalog,
    models_dir,
    resolve_model,
)

__all__ = [
    "CatalogEntry",
    "ResolvedModel",
    "entry_dir",
    "find_mmproj_beside",
    "installed_files",
    "load_catalog",
    "models_dir",
    "resolve_model",
]
