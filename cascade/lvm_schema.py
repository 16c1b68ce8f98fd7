"""The LVM's features by name, and the constants in their definitions.

`cascade.lvm.Lvm.features` computes them in torch and `cascade.infer.lvm_features` in NumPy;
both read their names and constants here, so the two stay one definition (see cascade.lvm for
what each group measures).
"""

CONTENT = ("s1", "log_rank", "pred", "last", "ctx_max", "ctx_mean", "heur")
STRUCTURE = ("same_article", "article_mass", "succ_s1", "is_first", "top_centroid")
ADJACENCY = ("prev_last", "prev_ctx_max")
FEATURES = CONTENT + STRUCTURE + ADJACENCY
MASS_TAU = 0.05  # softmax temperature of stage-1 scores for the article-mass feature
TOP_CENTROID = 10  # the centroid of this many top stage-1 candidates
