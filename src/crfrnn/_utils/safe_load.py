"""Bounded readers of untrusted files: YAML without aliases' blow-up, zips that declare their inflated sizes.

Both check what a file declares before anything large is built or inflated; every caller that reads a file a user
hands over goes through them (``docs/security.md``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

__all__ = ["MAX_INFLATED_BYTES", "MAX_YAML_DEPTH", "bounded_yaml_loader", "check_zip_sizes", "load_yaml"]

#: deepest nesting of lists and mappings a YAML file may have
MAX_YAML_DEPTH = 32
#: the most bytes the compressed entries of a ``torch.save`` zip may inflate to (``torch.save`` stores entries
#: uncompressed: a compressed entry that inflates far beyond that is a zip bomb)
MAX_INFLATED_BYTES = 32 * 2**20


def bounded_yaml_loader() -> Any:
    """A ``yaml.SafeLoader`` that refuses aliases (a few lines of them expand to billions of nodes) and nesting
    deeper than :data:`MAX_YAML_DEPTH`, before anything is built.

    Returns:
        The loader class, for ``yaml.load(text, Loader=...)``; its errors are ``yaml.YAMLError``.
    """
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise yaml.YAMLError(
                    f"it uses a YAML alias ({self.peek_event().start_mark}); aliases are refused (a few of them "
                    "can expand to billions of values): write the values out."
                )
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise yaml.YAMLError(
                        f"it nests lists or mappings deeper than {MAX_YAML_DEPTH} levels "
                        f"({self.peek_event().start_mark}); a configuration is a flat mapping of a few levels."
                    )
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return BoundedLoader


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` with :func:`bounded_yaml_loader`'s bounds.

    Args:
        text: the YAML (or JSON) text.

    Returns:
        The plain Python value (mappings, lists, strings, numbers, booleans, None).

    Raises:
        yaml.YAMLError: malformed text, an alias, or nesting deeper than :data:`MAX_YAML_DEPTH`.
    """
    import yaml

    return yaml.load(text, Loader=bounded_yaml_loader())  # noqa: S506 (a SafeLoader)


def check_zip_sizes(path: Path, limit: int = MAX_INFLATED_BYTES) -> None:
    """Refuse a zip (a ``torch.save`` file) whose compressed entries declare more than ``limit`` bytes inflated.

    Args:
        path: the file; one that is not a zip (a legacy torch file) passes, and its reader reports it.
        limit: the bound on the compressed entries' declared uncompressed bytes.

    Raises:
        ValueError: naming the file, the declared size and the limit.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return
    inflated = sum(i.file_size for i in infos if i.compress_type != zipfile.ZIP_STORED)
    if inflated > limit:
        raise ValueError(
            f"{path}: its compressed entries declare {inflated} bytes uncompressed, more than the limit of {limit} "
            "bytes; it is not read (torch.save writes entries uncompressed, so this is not a checkpoint as written)."
        )
