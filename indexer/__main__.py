"""`python -m indexer <dir>` indexes a folder; `python -m indexer search <image>` searches;
`python -m indexer finetune <dir>` makes a domain model from a labelled folder;
`python -m indexer quantize <dir>` makes an int8 OpenVINO model calibrated on a folder;
`python -m indexer duplicates` prints the groups of near-duplicate images;
`python -m indexer keys create|list|revoke` manages the web app's API keys."""

import sys

from . import backup, duplicates, finetune, index, keys, quantize, search

VERBS = {"index": index.main, "search": search.main, "finetune": finetune.main,
         "quantize": quantize.main, "duplicates": duplicates.main, "keys": keys.main}
VERBS.update(backup.VERBS)  # backup, restore


def main(argv: list[str]) -> int:
    if argv and argv[0] in VERBS:
        return VERBS[argv[0]](argv[1:])
    return index.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
