"""Perplexity of a test file under an ARPA model, read by the `kenlm` package from PyPI (an
independent reader): printed as `paramdb eval perplexity` prints it. Usage:
kenlm_perplexity.py MODEL.arpa TEST.txt"""

import sys

import kenlm


def main():
    model = kenlm.Model(sys.argv[1])
    log10 = known = 0.0
    tokens = oov = 0
    with open(sys.argv[2], encoding="utf-8") as f:
        for line in f:
            # paramdb and lmplz skip sentence markers written in the text.
            words = [w for w in line.split() if w not in ("<s>", "</s>")]
            for prob, _, is_oov in model.full_scores(" ".join(words), bos=True, eos=True):
                tokens += 1
                log10 += prob
                if is_oov:
                    oov += 1
                else:
                    known += prob
    print(
        "perplexity %.2f including OOVs, %.2f excluding (%d tokens, %d OOV)"
        % (10 ** (-log10 / tokens), 10 ** (-known / (tokens - oov)), tokens, oov)
    )


if __name__ == "__main__":
    main()
