"""gensim (from PyPI) loads paramdb's word2vec exports, text and binary, as the same vectors,
and scores the analogy questions. Prints `gensim analogy: CORRECT/EVALUATED`.

usage: test_gensim_export.py VECTORS.txt VECTORS.bin questions-words.txt
"""

import sys

import numpy as np
from gensim.models import KeyedVectors

text_path, bin_path, questions = sys.argv[1:4]
text = KeyedVectors.load_word2vec_format(text_path, binary=False)
binary = KeyedVectors.load_word2vec_format(bin_path, binary=True)
assert text.index_to_key == binary.index_to_key, "same words in the same order"
assert len(text.index_to_key) > 1000, len(text.index_to_key)
# Text holds each float's shortest round-trip form, so both load bit for bit alike.
assert np.array_equal(text.vectors, binary.vectors), "text and binary vectors differ"

score, sections = binary.evaluate_word_analogies(
    questions, restrict_vocab=30000, case_insensitive=True
)
total = next(s for s in sections if s["section"] == "Total accuracy")
correct, incorrect = len(total["correct"]), len(total["incorrect"])
print(f"gensim analogy: {correct}/{correct + incorrect}")
