//! paramdb's trainers (word2vec, n-gram language model). They see only `paramdb-client`. Land
//! with issues #5 and #6; intentionally empty until then.
