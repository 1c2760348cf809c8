"""`vision-agent conversations list | show ID | export ID | search TEXT | rename ID TITLE | rm ID` (alias `conv`).

ID is a conversation id, an id prefix (4 characters or more) or a unique title prefix. Everything read from the
store is untrusted text: in text mode it is shown through frontends.terminal (control characters made visible);
--json keeps the exact text (JSON-escaped).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vision_agent.config import Settings
    from vision_agent.sessions.store import ConversationInfo, Store, TurnRecord

SHORT_ID = 12


def register(commands, common: argparse.ArgumentParser, model: argparse.ArgumentParser) -> None:
    conv = commands.add_parser(
        "conversations", aliases=["conv"], help="list, show, export, search, rename or remove saved conversations"
    )
    actions = conv.add_subparsers(dest="conversations_command", metavar="ACTION", required=True)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--json", action="store_true", help="print JSON (the exact stored text) instead of text")
    ref = argparse.ArgumentParser(add_help=False)
    ref.add_argument("ref", metavar="ID", help="conversation id, id prefix or unique title prefix")

    listing = actions.add_parser("list", parents=[common, data], help="conversations, the most recently updated first")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N conversations (default: all)")
    listing.set_defaults(handler=list_conversations)
    show_parser = actions.add_parser(
        "show", parents=[common, data, ref], help="the turns: prompt, images, tool steps, answer"
    )
    show_parser.set_defaults(handler=show)
    export_parser = actions.add_parser(
        "export", parents=[common, ref], help="Markdown (images copied beside it) or the full record as JSON"
    )
    export_parser.add_argument("--format", choices=["md", "json"], default="md", help="(default: md)")
    export_parser.add_argument(
        "-o", "--output", metavar="PATH", help="write here (default: stdout; Markdown then links the stored images)"
    )
    export_parser.set_defaults(handler=export)
    search_parser = actions.add_parser("search", parents=[common, data], help="full-text search of prompts and answers")
    search_parser.add_argument("text", metavar="TEXT")
    search_parser.add_argument("--limit", type=int, default=50, metavar="N", help="at most N hits (default: 50)")
    search_parser.set_defaults(handler=search)
    rename_parser = actions.add_parser("rename", parents=[common, ref], help="give a conversation a new title")
    rename_parser.add_argument("title", metavar="TITLE")
    rename_parser.set_defaults(handler=rename)
    rm_parser = actions.add_parser("rm", parents=[common, ref], help="remove a conversation (and images only it used)")
    rm_parser.set_defaults(handler=remove)


# -- the actions ------------------------------------------------------------------------------------------


def list_conversations(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.frontends.terminal import safe_line

    if args.limit is not None and args.limit < 0:
        raise _usage("--limit must be 0 or more")
    with _open(settings) as store:
        found = store.list(limit=args.limit)
    if args.json:
        _print_json([_info(c) for c in found])
        return 0
    for c in found:
        print(f"{c.id[:SHORT_ID]}  {_when(c.updated_at)}  {c.turns:>4} turn{'s' if c.turns != 1 else ' '}  "
              f"{safe_line(c.title)}")  # fmt: skip
    if not found:
        print("vision-agent: no conversations yet", file=sys.stderr)
    return 0


def show(args: argparse.Namespace, settings: Settings) -> int:
    with _open(settings) as store:
        conversation = store.resolve(args.ref)
        info = store.info(conversation)
        turns = store.turns(conversation)
        if args.json:
            _print_json(_record(store, info, turns))
            return 0
        sys.stdout.write(_show_text(store, info, turns))
    return 0


def export(args: argparse.Namespace, settings: Settings) -> int:
    with _open(settings) as store:
        conversation = store.resolve(args.ref)
        info = store.info(conversation)
        turns = store.turns(conversation)
        if args.format == "json":
            text = _json_text(_record(store, info, turns)) + "\n"
            if args.output is None:
                sys.stdout.write(text)
            else:
                _write_file(Path(args.output), text)
            return 0
        if args.output is None:
            sys.stdout.write(_markdown(info, turns, lambda sha: str(store.image_path(sha))))
            return 0
        target = Path(args.output)
        images = _copy_images(store, turns, target, settings.images)
        _write_file(target, _markdown(info, turns, lambda sha: images.get(sha, "missing")))
    print(f"vision-agent: wrote {_shown_path(target)} ({len(images)} image(s) beside it)", file=sys.stderr)
    return 0


def search(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.frontends.terminal import safe_line

    if args.limit < 1:
        raise _usage("--limit must be 1 or more")
    with _open(settings) as store:
        hits = store.search(args.text, limit=args.limit)
    if args.json:
        _print_json([{"conversation_id": h.conversation_id, "title": h.title, "turn": h.turn, "snippet": h.snippet}
                     for h in hits])  # fmt: skip
        return 0
    for hit in hits:
        where = f"{hit.conversation_id[:SHORT_ID]}  turn {hit.turn + 1}"
        print(f"{where}  {safe_line(hit.title)}: {safe_line(hit.snippet)}")
    if not hits:
        print("vision-agent: nothing found", file=sys.stderr)
    return 0


def rename(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.frontends.terminal import safe_line

    with _open(settings) as store:
        conversation = store.resolve(args.ref)
        store.rename(conversation, args.title)
        title = store.info(conversation).title
    print(f"vision-agent: renamed {conversation[:SHORT_ID]} to {safe_line(title)}", file=sys.stderr)
    return 0


def remove(args: argparse.Namespace, settings: Settings) -> int:
    from vision_agent.frontends.terminal import safe_line

    with _open(settings) as store:
        conversation = store.resolve(args.ref)
        info = store.info(conversation)
        store.delete(conversation)
    print(f"vision-agent: removed {info.id} ({info.turns} turn(s)): {safe_line(info.title)}", file=sys.stderr)
    return 0


# -- reading the store ------------------------------------------------------------------------------------


def _open(settings: Settings) -> Store:
    from vision_agent.sessions.store import Store

    return Store.open(settings.store.path, limits=settings.images)


def _info(info: ConversationInfo) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(info)


def _record(store: Store, info: ConversationInfo, turns: list[TurnRecord]) -> dict[str, Any]:
    """The full record: the conversation, and each turn with its steps and the paths of its stored images."""
    from dataclasses import asdict

    return {
        **_info(info),
        "turns": [
            {**asdict(turn), "image_paths": [str(store.image_path(sha)) for sha in turn.images]} for turn in turns
        ],
    }


# -- text -------------------------------------------------------------------------------------------------


def _show_text(store: Store, info: ConversationInfo, turns: list[TurnRecord]) -> str:
    from vision_agent.frontends.terminal import safe, safe_line

    lines = [
        f"conversation {info.id}: {safe_line(info.title)}",
        f"model: {safe_line(info.model)}" + (f"  projector: {safe_line(info.mmproj)}" if info.mmproj else ""),
        f"created {_when(info.created_at)}, updated {_when(info.updated_at)}, {info.turns} turn(s)",
    ]
    for turn in turns:
        lines += ["", f"── turn {turn.index + 1} · {turn.status} · {_when(turn.created_at)} ──"]
        lines.append(f"prompt: {_indented(safe(turn.prompt))}")
        lines += [f"image: {safe_line(str(store.image_path(sha)))}" for sha in turn.images]
        for step in turn.steps:
            import json

            arguments = safe_line(json.dumps(step.arguments, ensure_ascii=False))
            outcome = {True: "ok", False: "error", None: "no result"}[step.ok]
            lines.append(f"→ {safe_line(step.tool)} {arguments}")
            lines.append(f"← {outcome}: {_indented(safe(step.output))}")
        if turn.answer:
            lines.append(f"answer: {_indented(safe(turn.answer))}")
        if turn.error:
            lines.append(f"error: {safe_line(turn.error)}")
    return "\n".join(lines) + "\n"


def _indented(text: str) -> str:
    return text.replace("\n", "\n  ")


def _when(seconds: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def _markdown(info: ConversationInfo, turns: list[TurnRecord], link) -> str:
    """Markdown of the conversation; `link(sha256)` is where each image is (relative beside an exported file)."""
    import json

    from vision_agent.frontends.terminal import safe, safe_line

    out = [f"# {_md_line(safe_line(info.title))}", "", f"- conversation: `{info.id}`"]
    out.append(f"- model: `{safe_line(info.model)}`")
    if info.mmproj:
        out.append(f"- projector: `{safe_line(info.mmproj)}`")
    out.append(f"- created: {_when(info.created_at)}, updated: {_when(info.updated_at)}")
    for turn in turns:
        out += ["", f"## Turn {turn.index + 1} ({turn.status})", ""]
        out += [f"![image {n + 1}]({link(sha)})" for n, sha in enumerate(turn.images)]
        if turn.images:
            out.append("")
        out += ["**Prompt:**", "", _quoted(safe(turn.prompt)), ""]
        for step in turn.steps:
            outcome = {True: "ok", False: "error", None: "no result"}[step.ok]
            arguments = json.dumps(step.arguments, ensure_ascii=False)
            out += [f"**Tool `{_md_line(safe_line(step.tool))}`** ({outcome})", "", _fenced(safe(arguments)), ""]
            out += [_fenced(safe(step.output)), ""]
        if turn.answer:
            out += ["**Answer:**", "", safe(turn.answer), ""]
        if turn.error:
            out += [f"**Error:** {_md_line(safe_line(turn.error))}", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _md_line(text: str) -> str:
    """One line of text in Markdown, its markup characters escaped (a title cannot become a link or HTML)."""
    return "".join("\\" + ch if ch in "\\`*_[]<>#!|" else ch for ch in text)


def _quoted(text: str) -> str:
    return "\n".join("> " + line for line in text.splitlines()) or ">"


def _fenced(text: str) -> str:
    """A code block whose fence is longer than any run of backticks inside, so the text cannot close it."""
    import re

    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


# -- files ------------------------------------------------------------------------------------------------


def _copy_images(store: Store, turns: list[TurnRecord], target: Path, limits) -> dict[str, str]:
    """Each image of the conversation copied once into <name>_images/ beside `target`; sha256 → relative link.

    The stored files are read like any input (a regular file, bounded: a planted FIFO or /dev/zero is refused);
    one that cannot be read is left out with a note."""
    from vision_agent.core.images import read_image_bytes
    from vision_agent.errors import ConfigError, VisionAgentError
    from vision_agent.frontends.terminal import safe_line

    folder = target.with_name(f"{target.stem}_images")
    links: dict[str, str] = {}
    for sha in dict.fromkeys(sha for turn in turns for sha in turn.images):
        try:
            # Our own PNGs of at most max_kept_pixels take under 4 bytes a pixel, whatever max_bytes says.
            data = read_image_bytes(store.image_path(sha), max_bytes=max(limits.max_bytes, 4 * limits.max_kept_pixels))
        except VisionAgentError as exc:
            print(f"vision-agent: note: image {sha[:12]} left out: {safe_line(str(exc))}", file=sys.stderr)
            continue
        name = f"{sha[:16]}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        except OSError as exc:
            raise ConfigError(f"cannot write {_shown_path(folder / name)}: {exc.strerror or exc}") from None
        links[sha] = f"{folder.name}/{name}"
    return links


def _write_file(path: Path, text: str) -> None:
    from vision_agent.errors import ConfigError

    try:
        path.write_text(text, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot write {_shown_path(path)}: {exc.strerror or exc}") from None


def _shown_path(path: Path) -> str:
    from vision_agent.frontends.terminal import safe_line

    return safe_line(str(path))


def _json_text(value: object) -> str:
    from vision_agent.frontends.terminal import json_text

    return json_text(value)


def _print_json(value: object) -> None:
    sys.stdout.write(_json_text(value) + "\n")


def _usage(message: str):
    from vision_agent.errors import ConfigError

    return ConfigError(message)
