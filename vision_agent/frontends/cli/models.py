"""`vision-agent models list | pull NAME | info NAME_OR_PATH | demo [DIR]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vision_agent.catalog.gguf_info import GGUFSummary
    from vision_agent.config import Settings


def register(commands, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    models = commands.add_parser("models", help="list, download, inspect or generate models")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="the catalog and what is downloaded")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(handler=list_models)
    pull_parser = actions.add_parser("pull", parents=[common], help="download a catalog model (resumable)")
    pull_parser.add_argument("name", metavar="NAME")
    pull_parser.set_defaults(handler=pull)
    info_parser = actions.add_parser("info", parents=[common], help="summarise a model's GGUF metadata")
    info_parser.add_argument(
        "path",
        metavar="NAME_OR_PATH",
        help="a catalog name (its text model and projector, as -m finds them) or a GGUF file",
    )
    info_parser.add_argument("--json", action="store_true", help="print the summaries as JSON")
    info_parser.set_defaults(handler=info)
    demo_parser = actions.add_parser("demo", parents=[common], help="write the tiny random-weight demo pair")
    demo_parser.add_argument(
        "directory", nargs="?", metavar="DIR", help="where to write it (default: the models dir's demo/)"
    )
    demo_parser.set_defaults(handler=demo)


def list_models(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.catalog import installed_files, load_catalog, models_dir

    rows = [("NAME", "SIZE", "STATUS", "DESCRIPTION")]
    records = []
    for entry in load_catalog().values():
        files = installed_files(settings.model, entry)
        if files:
            status = "ready"
        elif entry.generated:
            status = "generated on first use"
        else:
            status = "-"
        rows.append((entry.name, _size(entry.size_gb * 1e9), status, entry.description))
        records.append(
            {
                "name": entry.name,
                "size_bytes": int(entry.size_gb * 1e9),
                "status": "not downloaded" if status == "-" else status,
                "files": [str(path) for path in files or ()],
                "description": entry.description,
            }
        )
    if args.json:
        from vision_agent.frontends.terminal import json_text

        print(json_text(records))
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    print(f"\nmodels dir: {models_dir(settings.model)}", file=sys.stderr)
    return 0


def pull(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.catalog import entry_dir, load_catalog
    from vision_agent.catalog.demo_model import write_demo_pair
    from vision_agent.catalog.hub import download, resolve_filename
    from vision_agent.errors import NoModelError

    catalog = load_catalog()
    entry = catalog.get(args.name)
    if entry is None:
        raise NoModelError(f"unknown model {args.name!r}; known: {', '.join(catalog)}")
    directory = entry_dir(settings.model, entry)
    paths: list[Path] = []
    if entry.generated:
        paths += write_demo_pair(directory)
    else:
        for pattern, projector in ((entry.file, False), (entry.mmproj, True)):
            filename = resolve_filename(entry, pattern, projector=projector)
            print(f"pulling {entry.repo}/{filename}", file=sys.stderr)
            paths.append(download(entry, filename, directory))
    for path in paths:
        print(path)
    return 0


def info(args: argparse.Namespace, settings: Settings) -> int:
    """A catalog name shows its text model and its projector (generating the demo pair, as -m does);
    anything else is a GGUF file's path."""
    from vision_agent.catalog import load_catalog, resolve_model
    from vision_agent.catalog.gguf_info import read_summary

    if args.path in load_catalog():
        model = resolve_model(settings.model.model_copy(update={"name": args.path}))
        paths = list(model.pair)
    else:
        paths = [args.path]
    summaries = [read_summary(path) for path in paths]
    if args.json:
        import dataclasses

        from vision_agent.frontends.terminal import json_text

        print(json_text([{**dataclasses.asdict(s), "path": str(s.path)} for s in summaries]))
        return 0
    for index, summary in enumerate(summaries):
        if index:
            print()
        _show(summary)
    return 0


def _show(s: GGUFSummary) -> None:
    from vision_agent.frontends.terminal import safe_line

    # Every string here comes from the file (or its name): shown with control characters made visible.
    lines = [
        ("file", safe_line(str(s.path))),
        ("name", safe_line(s.name) or "-"),
        ("architecture", safe_line(s.architecture)),
        ("size", _size(s.size_bytes)),
        ("parameters", f"{s.n_params:,}"),
    ]
    if s.file_type:
        lines.append(("file type", s.file_type))
    if s.is_projector:
        lines += [
            ("role", "projector (mmproj)" if s.has_vision else "projector without vision"),
            ("projector type", safe_line(s.projector_type or "-")),
            ("output width", str(s.projection_dim or "-")),
            ("image size", f"{s.image_size}px, {s.patch_size}px patches" if s.image_size else "-"),
        ]
        if s.image_size and s.patch_size:
            lines.append(("patches per image", str((s.image_size // s.patch_size) ** 2)))
    else:
        lines += [
            ("role", "text model"),
            ("embedding width", str(s.embedding_length or "-")),
            ("layers", str(s.block_count or "-")),
            ("trained context", str(s.context_length or "-")),
            ("vocabulary", str(s.vocab_size or "-")),
            ("prompt format", s.template_family),
        ]
    width = max(len(key) for key, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")


def demo(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.catalog import entry_dir, load_catalog
    from vision_agent.catalog.demo_model import write_demo_pair

    catalog = load_catalog()
    directory = Path(args.directory) if args.directory else entry_dir(settings.model, catalog["demo"])
    for path in write_demo_pair(directory):
        print(path)
    print("demo pair written: random weights, its answers are noise (it proves the install)", file=sys.stderr)
    return 0


def _size(n_bytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n_bytes < 1000 or unit == "GB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return ""
