"""Every name that crosses the network between the server and the devices, defined once.

Both sides import these: a key renamed here is renamed for the server and the devices together,
and a reader of either side can see the whole wire vocabulary in one screen. What each value may
reveal about a device's data is said beside it (see also :func:`client.reply.shape_fit_reply`).
"""

from __future__ import annotations

# -- instructions: config keys the server sends with a round (FitIns / EvaluateIns config) ------
SERVER_ROUND = "server-round"
# The L2 norm a device clips its whole update to under user-level DP. The value is Flower's own
# key (``flwr.supercore.differential_privacy.KEY_CLIPPING_NORM``) so Flower's mods read it too.
CLIP_NORM = "clipping_norm"
# The L2 bound a device clips its update to before SecAgg+ masks it.
SECAGG_BOUND = "confide.secagg-bound"
# Device noise (dp-noise-source = "devices"): the Skellam variance per coordinate each device
# adds, in SecAgg+'s integer units. The device derives everything else itself (the scale from
# SecAgg+'s own setup, its rounding bound from the clip norm), so the server sets only this.
NOISE_MU = "confide.noise-mu"
# Device noise on shards (cohort-size > 1, no SecAgg+ to deliver them): SecAgg+'s clipping range
# c and quantization range T that each simulated user's integers live in, as [c, T] float64 bytes.
NOISE_RANGES = "confide.noise-ranges"
# Adaptive clipping (dp-user-adaptive-clip): 1 asks each device for its clip bit, whether its
# update was within this round's CLIP_NORM before clipping (see CLIP_UNDER for how it travels).
CLIP_BIT = "confide.clip-bit"
# Adaptive clipping under device noise: the even integer B that each device scales its centred
# clip bit by inside its noised integer vector, (bit - 1/2) x B (server/user_dp.RoundTerms).
CLIP_BIT_UNITS = "confide.clip-bit-units"

# Users (dense ids, int64 bytes) a node that simulates a shard of them trains or evaluates this
# round (cohort-size > 1, simulations only): the server's draw among the node's shard.
SHARD_USERS = "confide.shard-users"

# -- query replies: what a node says of itself, once per run (server/population.py) ------------
# A simulated node's partition id: the user it plays, or its shard's index (cohort-size > 1).
# The server assigned it (it is the federation's numbering); a deployed device sends nothing.
PARTITION_ID = "partition-id"

# -- fit replies: metrics a device sends in plaintext ---------------------------------------------
LOSS = "loss"  # training loss; never sent under DP or SecAgg+ (a function of the device's data)
DP_STATUS = "dp_status"  # one of the statuses below (interaction-level DP only)
DP_EPSILON = "dp_epsilon"  # the device's ε so far, rounded to EPSILON_DECIMALS
DP_NOISE_MULTIPLIER = "dp_noise_multiplier"  # σ of this round, rounded to EPSILON_DECIMALS
SECAGG_CLIPPED = "secagg_clipped"  # coordinates SecAgg+'s quantizer would clip (0 by design)
# Device noise: coordinates clamped into SecAgg+'s range after noising (the mechanism's failure
# event, planned below 1e-15 per run; counted so that the ledger shows it if it ever happens)
NOISE_CLAMPED = "noise_clamped"
# Adaptive clipping without SecAgg+: how many of the reply's trained users had an update within
# CLIP_NORM (0 or 1 for a device, up to its trained users for a shard). It says nothing the
# server does not see already: a clipped update has norm exactly CLIP_NORM. Under SecAgg+ the bit
# never travels in plaintext: it is one more masked coordinate, (bit - 1/2) x SECAGG_BOUND,
# appended to the update (client/mods.py), and only the cohort's sum is unmasked.
CLIP_UNDER = "confide.clip-under"
# Rounded: the exact ε and σ would reveal the device's sampling rate, hence its data size.
EPSILON_DECIMALS = 1

# -- fit reply statuses (DP_STATUS) ---------------------------------------------------------------
TRAINED = "trained"
BUDGET_EXHAUSTED = "budget-exhausted"  # declined: the round would pass an ε cap; nothing trained

# -- evaluate replies: metrics every evaluated device sends ----------------------------------------
HR10 = "hr10"
NDCG10 = "ndcg10"
FULL_HR10 = "full_hr10"
FULL_NDCG10 = "full_ndcg10"
EVAL_METRICS = (HR10, NDCG10, FULL_HR10, FULL_NDCG10)
# Beyond accuracy (shared/beyond_accuracy.py). The device's own list's mean pairwise 1 - cos of
# its items, from the global model's public item tables: a number in [0, 2] about the list.
DIVERSITY10 = "diversity10"
# The device's top-10 over the items it did not train on, best first, as "i1,i2,...,i10": the
# server turns the lists into catalogue coverage, exposure Gini and novelty. Reveals the user's
# recommendations (their taste, given the global model) and that those items are not among
# their training items; a deployed device sends it only if its node config opts in
# (client/policy.py, share-top-list).
TOP10 = "top10"

# -- shard replies (cohort-size > 1): a node's reply for the users it trained or evaluated ------
# A shard's fit reply carries the SUM of its users' weighted, clipped updates (not new weights),
# and these plaintext facts about them. Simulations only: the shard is the simulation host.
SHARD_TRAINED = "confide.shard-trained"  # users in the sum
SHARD_WEIGHT = "confide.shard-weight"  # the sum of their weights (1 each, or example counts)
SHARD_DECLINED = "confide.shard-declined"  # int64 bytes: users at their budget (not in the sum)
SHARD_EPSILONS = "confide.shard-epsilons"  # float64 bytes: every user's ε, rounded as DP_EPSILON
SHARD_NOISE_MULTIPLIERS = "confide.shard-sigmas"  # float64 bytes: each trained user's σ
# A shard's evaluate reply: float64 bytes [users, metrics] in SHARD_EVAL_COLUMNS order, and the
# users' top-10 lists as int64 bytes [users, 10] when they share them.
SHARD_EVAL = "confide.shard-eval"
SHARD_EVAL_COLUMNS = ("loss", *EVAL_METRICS, DIVERSITY10)
SHARD_TOP10 = "confide.shard-top10"
