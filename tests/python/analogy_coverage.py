"""How many analogy questions gensim evaluates on a word2vec binary file with
`restrict_vocab=30000` (case-folded), and its accuracy: prints one JSON line.

usage: analogy_coverage.py VECTORS.bin questions-words.txt
"""

import json
import sys

from gensim.models import KeyedVectors

kv = KeyedVectors.load_word2vec_format(sys.argv[1], binary=True)
score, sections = kv.evaluate_word_analogies(sys.argv[2], restrict_vocab=30000, case_insensitive=True)
total = next(s for s in sections if s["section"] == "Total accuracy")
print(json.dumps({"covered": len(total["correct"]) + len(total["incorrect"]), "analogy": score}))
