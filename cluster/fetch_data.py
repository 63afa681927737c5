"""Put WikiText-2's raw test file into a data folder, from the Hugging Face hub, byte for byte as ../shared/data has it.

    python cluster/fetch_data.py /mnt/shared/data    # writes /mnt/shared/data/wikitext2/wiki.test.raw

The hub holds the file as rows (``Salesforce/wikitext``, config ``wikitext-2-raw-v1``, split ``test``): each line
plus ``"\\n"``, or ``""`` for a blank line, which the file holds as a single space. The rows are joined back,
checked against the file's SHA-256 and written atomically, so every node and every run reads the same corpus
(the value cache keys on its token ids). A folder that already holds the right file is left as it is. Needs the
package ``datasets`` and the hub; the job specs then name the folder as ``data_dir``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

HUB_ID = "Salesforce/wikitext"
HUB_CONFIG = "wikitext-2-raw-v1"
RELATIVE_PATH = Path("wikitext2") / "wiki.test.raw"
SHA256 = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"
LINES = 4358


class FetchError(Exception):
    """The hub's rows did not give back the expected file, or the folder cannot be written."""


def raw_text(rows: Iterable[str]) -> str:
    """The raw file from the hub's rows: a blank row is the line ``" "``, every other row is a line with its LF."""
    return "".join(row if row else " \n" for row in rows)


def hub_rows() -> list[str]:
    """The test split's ``text`` column, through ``datasets`` (cached under ``HF_HOME``)."""
    try:
        import datasets
    except ImportError as error:
        raise FetchError("fetching WikiText-2 needs the package datasets: pip install datasets") from error
    try:
        split = datasets.load_dataset(HUB_ID, HUB_CONFIG, split="test")
    except Exception as error:  # datasets raises many types (network, auth, missing config): all mean the same here
        raise FetchError(f"could not load {HUB_ID} ({HUB_CONFIG}) from the Hugging Face hub: {error}") from error
    return list(split["text"])


def checked(text: str) -> bytes:
    """``text`` as UTF-8 if it is the expected file; a FetchError naming what differs otherwise."""
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise FetchError(
            f"the rows of {HUB_ID} ({HUB_CONFIG}) give a file of {text.count(chr(10))} lines and {len(data)} bytes "
            f"with sha256 {digest}, not the expected {LINES} lines with sha256 {SHA256}: the hub's copy changed"
        )
    return data


def fetch(data_dir: Path, rows: Sequence[str] | None = None) -> Path:
    """Write ``data_dir/wikitext2/wiki.test.raw`` (from ``rows``, else the hub) unless the right file is there."""
    target = data_dir / RELATIVE_PATH
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
        return target
    data = checked(raw_text(hub_rows() if rows is None else rows))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(target)  # atomic: nodes fetching at once never read half a file
    except OSError as error:
        raise FetchError(f"could not write {target}: {error}") from error
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path, help="the data folder the job specs name as data_dir")
    args = parser.parse_args(argv)
    try:
        target = fetch(args.data_dir)
    except FetchError as error:
        print(f"fetch_data: {error}", file=sys.stderr)
        return 1
    print(f"fetch_data: {target} ({LINES} lines, sha256 {SHA256[:12]}...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
