"""Every export format read back by an independent reader from PyPI, against reference rows
(little-endian u64 keys and f32 values the test pulled through the client): numpy for .npy,
the safetensors package, gensim for both word2vec formats, and plain parsing for the tsv pair.
Values must match bit for bit.

usage: test_exports.py DIR   (DIR holds ref.keys, ref.values, ref.words and the exports)
"""

import os
import sys

import numpy as np
from gensim.models import KeyedVectors
from safetensors.numpy import load_file

d = sys.argv[1]
keys = np.fromfile(os.path.join(d, "ref.keys"), dtype="<u8")
values = np.fromfile(os.path.join(d, "ref.values"), dtype="<f4").reshape(len(keys), -1)
words = open(os.path.join(d, "ref.words"), encoding="utf-8").read().split("\n")[: len(keys)]
assert len(keys) > 100, len(keys)

v = np.load(os.path.join(d, "v.npy"))
k = np.load(os.path.join(d, "v.keys.npy"))
assert v.dtype == np.float32 and v.shape == values.shape, (v.dtype, v.shape)
assert np.array_equal(k, keys) and np.array_equal(v.view("<u4"), values.view("<u4"))

t = load_file(os.path.join(d, "v.safetensors"))
assert np.array_equal(t["keys"], keys)
assert np.array_equal(t["vectors"].view("<u4"), values.view("<u4"))

for name, binary in (("v.txt", False), ("v.bin", True)):
    kv = KeyedVectors.load_word2vec_format(os.path.join(d, name), binary=binary)
    assert kv.index_to_key == words, name
    assert np.array_equal(kv.vectors.view("<u4"), values.view("<u4")), name

tsv = np.loadtxt(os.path.join(d, "v.tsv"), dtype=np.float32, delimiter="\t", ndmin=2)
assert np.array_equal(tsv.view("<u4"), values.view("<u4"))
meta = open(os.path.join(d, "v.metadata.tsv"), encoding="utf-8").read().split("\n")[: len(keys)]
assert meta == words
print("exports: ok")
