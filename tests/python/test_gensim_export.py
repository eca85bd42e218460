"""gensim (from PyPI) loads paramdb's word2vec exports, text and binary, as the same vectors,
and scores the analogy questions. Prints `gensim analogy: CORRECT/EVALUATED`.

It also checks the export's order against its own count of the corpus: words most frequent
first, ties by word, so that `load_word2vec_format(limit=1000)` gets the 1,000 most frequent
words and `evaluate_word_analogies(restrict_vocab=N)` covers the questions it covers on any
frequency-ordered vectors of the same vocabulary.

usage: test_gensim_export.py VECTORS.txt VECTORS.bin questions-words.txt CORPUS MIN_COUNT
"""

import collections
import sys

import numpy as np
from gensim.models import KeyedVectors

text_path, bin_path, questions, corpus = sys.argv[1:5]
min_count = int(sys.argv[5])
text = KeyedVectors.load_word2vec_format(text_path, binary=False)
binary = KeyedVectors.load_word2vec_format(bin_path, binary=True)
assert text.index_to_key == binary.index_to_key, "same words in the same order"
assert len(text.index_to_key) > 1000, len(text.index_to_key)
# Text holds each float's shortest round-trip form, so both load bit for bit alike.
assert np.array_equal(text.vectors, binary.vectors), "text and binary vectors differ"

counts = collections.Counter()
with open(corpus, encoding="utf-8") as f:
    for line in f:
        counts.update(line.split())
# paramdb keeps words of at most 100 bytes (word2vec.c's MAX_STRING), and orders ties by bytes.
kept = (w for w, c in counts.items() if c >= min_count and len(w.encode()) <= 100)
expected = sorted(kept, key=lambda w: (-counts[w], w.encode()))
assert binary.index_to_key == expected, "export order is not by count, then word"
top = KeyedVectors.load_word2vec_format(bin_path, binary=True, limit=1000)
assert top.index_to_key == expected[:1000], "limit=1000 must give the 1,000 most frequent words"

# Coverage depends only on which words rank in the top N: compare with vectors of the same
# words in the reference order.
restrict = len(expected) // 2
reference = KeyedVectors(vector_size=binary.vector_size)
reference.add_vectors(expected, np.random.default_rng(1).random((len(expected), binary.vector_size), dtype=np.float32))


def covered(kv):
    _, sections = kv.evaluate_word_analogies(questions, restrict_vocab=restrict, case_insensitive=True)
    total = next(s for s in sections if s["section"] == "Total accuracy")
    return len(total["correct"]) + len(total["incorrect"])


assert covered(binary) == covered(reference), (covered(binary), covered(reference))
print(f"coverage at restrict_vocab={restrict}: {covered(binary)} questions")

score, sections = binary.evaluate_word_analogies(
    questions, restrict_vocab=30000, case_insensitive=True
)
total = next(s for s in sections if s["section"] == "Total accuracy")
correct, incorrect = len(total["correct"]), len(total["incorrect"])
print(f"gensim analogy: {correct}/{correct + incorrect}")
