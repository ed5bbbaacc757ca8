"""`python -m indexer <dir>` indexes a folder; `python -m indexer search <image>` searches."""

import sys

from . import index, search

VERBS = {"index": index.main, "search": search.main}


def main(argv: list[str]) -> int:
    if argv and argv[0] in VERBS:
        return VERBS[argv[0]](argv[1:])
    return index.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
