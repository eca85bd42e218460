"""gensim's word2vec on a corpus, for the side-by-side benchmark: trains with the given
settings, then scores analogies (30,000 most frequent words, case-folded), WordSim353 and
SimLex-999, and prints one JSON line.

usage: gensim_word2vec.py CORPUS DATA_DIR EPOCHS THREADS [VECTORS_OUT] [--cbow] [--alpha A]
"""

import time

# The clock starts before gensim is imported and stops when training ends, so the figure is
# what a user waits for (import, vocabulary, training) and leaves out the evaluation below,
# as paramdb's timing does.
BOOT = time.time()

import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from gensim.models import Word2Vec  # noqa: E402
from gensim.models.word2vec import LineSentence  # noqa: E402

args = [a for a in sys.argv[1:]]
cbow = "--cbow" in args
alpha = 0.025
if "--alpha" in args:
    i = args.index("--alpha")
    alpha = float(args[i + 1])
    del args[i : i + 2]
args = [a for a in args if a != "--cbow"]
corpus, data, epochs, threads = args[0], args[1], int(args[2]), int(args[3])
logging.basicConfig(level=logging.WARNING)
model = Word2Vec(
    LineSentence(corpus),
    vector_size=100,
    window=5,
    negative=5,
    min_count=5,
    sample=1e-4,
    sg=0 if cbow else 1,
    alpha=alpha,
    workers=threads,
    epochs=epochs,
)
seconds = time.time() - BOOT
kv = model.wv
words = model.corpus_total_words * epochs
analogy, sections = kv.evaluate_word_analogies(
    f"{data}/questions-words.txt", restrict_vocab=30000, case_insensitive=True
)
total = next(s for s in sections if s["section"] == "Total accuracy")
ws = kv.evaluate_word_pairs(f"{data}/wordsim353.tsv", case_insensitive=True)[1][0]
sl = kv.evaluate_word_pairs(f"{data}/simlex999.txt", case_insensitive=True)[1][0]
if len(args) > 4:
    kv.save_word2vec_format(args[4], binary=True)
print(
    json.dumps(
        {
            "seconds": seconds,
            "words_per_sec": words / seconds,
            "analogy": analogy,
            "covered": len(total["correct"]) + len(total["incorrect"]),
            "wordsim353": ws,
            "simlex999": sl,
            "vocab": len(kv.index_to_key),
        }
    )
)
