"""Search by words: a few typed words -> the WordNet synsets they name -> images by their tags.

The tags come from the base model's ImageNet head at indexing (imgsearch/tags.py): each image
holds ``model_synsets``, ``{wordnet id: probability that the image shows something at or
below that synset}``. A word names one or more synsets (its senses; synonyms are lemmas of
the same synset, plurals fall back to their singular), so an image's score for a word is the
sum of those entries: one ``sparse_vector`` query with ``{id: 1}`` per sense, and "dog" sums
the breeds without listing them.

Parsing: the words are read left to right, each time taking the longest run of up to
:data:`MAX_PHRASE` words that is a lemma ("running shoe", "t shirt", "cowboy hat"), else the
word alone. A word that names nothing (not a noun WordNet has above an ImageNet class:
colours, adjectives, misspellings) is reported back with the nearest known words, and the
others are searched with; when none is known the answer has no hits and the suggestions, not
an error.

Several words: an image's score is the sum of its scores for each word (a ``bool`` ``should``
of one ``sparse_vector`` clause a word), so an image that shows both "hat" and "shoe" ranks
above one that shows only either, and one word's strong match above another's weak one.
(A product of the words' scores would demand every word, but with at most two tags an image,
most pairs of words would find nothing; ``minimum_should_match`` is 1.)

With a query image the words re-rank the visual neighbours (:data:`COMBINE_WEIGHT` says why
and how much).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .errors import BadInput
from .tags import Vocabulary, normalise

# Longest phrase looked up as one lemma: WordNet's longest lemmas above the ImageNet classes
# are four words ("personal digital assistant", "church building", ...).
MAX_PHRASE = 4
MAX_WORDS = 20  # a query of more words is a paste, not a search
MAX_CHARS = 200
SUGGESTIONS = 3  # nearest known words offered for an unknown one
# difflib's ratio at which a known word is close enough to offer: one letter wrong or swapped
# in a short word ("sheo" -> "shoe", "dgo" -> "dingo", "red" -> "reed": a spelling guess, not a
# meaning; the answer says they are suggestions).
SUGGESTION_CUTOFF = 0.75
PUNCTUATION = ".,;:!?\"`()[]{}<>*~^+=|\\/&%$#@"  # not "'": lemmas hold it (jack-o'-lantern)
# Words that join others and name nothing: passed over, neither searched nor "unknown".
STOP_WORDS = frozenset({"a", "an", "and", "or", "the", "of", "with", "in", "on", "at", "for",
                        "to", "by", "my", "some"})
# How words and a query image combine: the visual neighbours (num_candidates of them, 100 by
# default) re-ranked by cosine + COMBINE_WEIGHT x the words' score. bench/words.py measured it
# against keeping only the neighbours that show the words (a filter) and against the photo
# alone, on the clothing splits (docs/BENCHMARKS.md, "Search by words"): chosen on
# validation among 0.05-2, and better than the filter on test too (a filter drops the right
# images the tagger missed; a re-rank only moves them down).
COMBINE_WEIGHT = 0.5
TAG_FIELD = "model_synsets"


class WordsError(BadInput):
    """Words that cannot be searched with as given (too long)."""

    code = "invalid_words"


@dataclass(frozen=True)
class Term:
    """One thing searched for: the words as typed and the synsets they name."""

    text: str
    senses: tuple[str, ...]
    names: tuple[str, ...]  # each sense's name (its first lemma), for the answer


@dataclass(frozen=True)
class WordQuery:
    text: str
    terms: tuple[Term, ...]
    unknown: tuple[str, ...] = ()
    suggestions: dict[str, list[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        """Whether there is anything to search for."""
        return bool(self.terms)

    def es_query(self) -> dict:
        """The Elasticsearch query that scores an image by its tags for these words."""
        return {"bool": {"should": [
            {"sparse_vector": {"field": TAG_FIELD,
                               "query_vector": {wnid: 1.0 for wnid in term.senses}}}
            for term in self.terms], "minimum_should_match": 1}}

    def score(self, synsets: dict | None) -> float:
        """The same score from a document's own ``model_synsets`` (for re-ranking)."""
        synsets = synsets or {}
        return sum(float(synsets.get(wnid, 0.0)) for term in self.terms for wnid in term.senses)

    def to_json(self) -> dict:
        return {
            "text": self.text,
            "terms": [{"text": t.text, "senses": list(t.senses), "names": list(t.names)}
                      for t in self.terms],
            "unknown": list(self.unknown),
            "suggestions": self.suggestions,
        }


class WordParser:
    """Typed words -> a :class:`WordQuery`, with the vocabulary of the tagger."""

    def __init__(self, vocabulary: Vocabulary | None = None):
        self.vocabulary = vocabulary or Vocabulary.load()
        self._known = self.vocabulary.known_words()

    def parse(self, text: str) -> WordQuery:
        if len(text) > MAX_CHARS:
            raise WordsError(f"q is at most {MAX_CHARS} characters, not {len(text)}")
        # Punctuation around a word is not part of it ("shoes," "(hat)" "dog?"), and no
        # character is ever query syntax: only synset ids reach Elasticsearch.
        words = [w for w in (w.strip(PUNCTUATION) for w in normalise(text).split()) if w]
        if not words:
            raise WordsError("q holds no words (only spaces or punctuation)")
        if len(words) > MAX_WORDS:
            raise WordsError(f"q is at most {MAX_WORDS} words, not {len(words)}")
        terms: list[Term] = []
        unknown: list[str] = []
        at = 0
        while at < len(words):
            if words[at] in STOP_WORDS:
                at += 1
                continue
            for length in range(min(MAX_PHRASE, len(words) - at), 0, -1):
                phrase = " ".join(words[at : at + length])
                senses = self.vocabulary.senses(phrase)
                if senses:
                    terms.append(Term(phrase, senses,
                                      tuple(self.vocabulary.name(s) for s in senses)))
                    at += length
                    break
            else:
                unknown.append(words[at])
                at += 1
        suggestions = {w: self.suggest(w) for w in dict.fromkeys(unknown)}
        return WordQuery(text, tuple(terms), tuple(unknown), suggestions)

    def suggest(self, word: str) -> list[str]:
        """The known words nearest to ``word`` by spelling."""
        return difflib.get_close_matches(word, self._known, n=SUGGESTIONS,
                                         cutoff=SUGGESTION_CUTOFF)
