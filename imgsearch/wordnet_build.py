"""``python -m imgsearch.wordnet_build``: generate ``imgsearch/data/imagenet_wordnet.json`` once,
offline, from two sources, and commit it (the product reads only the JSON:
:mod:`imgsearch.tags`).

- The 1,000 ImageNet-1k classes in the classifier's output order, as WordNet 3.0 noun ids
  (``n<offset>``): ``timm/data/_info/imagenet_synsets.txt`` from timm's wheel (Apache-2.0), read
  as a zip (``pip download timm --no-deps``); timm is not a dependency of this product.
- Every class's lemmas (synonyms) and hypernym chain from WordNet 3.0's own database
  (``data.noun``: Debian's ``wordnet-base``, ``apt-get install wordnet-base``), hypernyms and
  instance hypernyms followed by synset offset up to ``entity``.

The output holds each class's id and lemmas in class order, and a table of every synset met on
the way up (lemmas and parents), so :mod:`imgsearch.tags` can find every class below a broad
word ("dog" -> the breeds) without WordNet installed. tests/imgsearch/test_tags.py checks the
class order against the weights' own ``assets/labels.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "imagenet_wordnet.json"
TIMM_MEMBER = "timm/data/_info/imagenet_synsets.txt"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
HYPERNYMS = ("@", "@i")  # hypernym, instance hypernym


def read_timm_synsets(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        ids = z.read(TIMM_MEMBER).decode().split()
    if len(ids) != 1000 or len(set(ids)) != 1000:
        raise SystemExit(f"{wheel}:{TIMM_MEMBER} holds {len(ids)} ids, expected 1,000 unique")
    return ids


def read_wordnet_nouns(path: Path) -> dict[str, dict]:
    """``{"n<offset>": {"lemmas": [...], "parents": [...]}}`` of every noun synset."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split(" | ", 1)[0].split()
            offset, words = fields[0], int(fields[3], 16)
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(words)]
            # Adjective markers such as "(p)" are not part of a noun's lemma, but be safe.
            lemmas = [w.split("(")[0] for w in lemmas]
            at = 4 + 2 * words
            pointers = int(fields[at])
            parents = []
            for i in range(pointers):
                symbol, target, pos = fields[at + 1 + 4 * i: at + 4 + 4 * i]
                if symbol in HYPERNYMS and pos == "n":
                    parents.append(f"n{target}")
            out[f"n{offset}"] = {"lemmas": lemmas, "parents": parents}
    return out


def build(wheel: Path, nouns: Path) -> dict:
    ids = read_timm_synsets(wheel)
    wordnet = read_wordnet_nouns(nouns)
    missing = [i for i in ids if i not in wordnet]
    if missing:
        raise SystemExit(f"{len(missing)} ImageNet ids are not WordNet 3.0 nouns: {missing[:5]}")
    synsets: dict[str, dict] = {}
    todo = list(ids)
    while todo:
        wnid = todo.pop()
        if wnid in synsets:
            continue
        synsets[wnid] = wordnet[wnid]
        todo.extend(wordnet[wnid]["parents"])
    return {
        "provenance": {
            "classes": f"{TIMM_MEMBER} from {wheel.name} (timm, Apache-2.0), sha256 "
                       f"{hashlib.sha256(wheel.read_bytes()).hexdigest()}",
            "wordnet": f"WordNet 3.0 {nouns} (Debian wordnet-base 1:3.0-37), sha256 "
                       f"{hashlib.sha256(nouns.read_bytes()).hexdigest()}",
            "wordnet_licence": "WordNet 3.0 Copyright 2006 by Princeton University. All rights "
                               "reserved. Permission to use, copy, modify and distribute this "
                               "database for any purpose and without fee or royalty is granted "
                               "under the WordNet 3.0 licence "
                               "(https://wordnet.princeton.edu/license-and-commercial-use); "
                               "THE DATABASE IS PROVIDED \"AS IS\" WITHOUT WARRANTY.",
            "generator": "python -m imgsearch.wordnet_build --timm-wheel <timm wheel>",
        },
        "classes": ids,
        "synsets": dict(sorted(synsets.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgsearch.wordnet_build",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm-wheel", type=Path, required=True,
                        help="timm's wheel (`pip download timm --no-deps`)")
    parser.add_argument("--wordnet-nouns", type=Path, default=WORDNET_NOUNS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    data = build(args.timm_wheel, args.wordnet_nouns)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=0, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(data['classes'])} classes, {len(data['synsets'])} synsets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
