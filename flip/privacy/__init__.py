"""Privacy that is declared in one config option, enforced on both sides and accounted.

`mechanisms/` holds one class per mechanism: its schema, rules, server half, site half, stated
guarantee and releases. `plan` picks the class for a run and adds SecAgg+; `accounting` composes
what it releases; `policy` checks it against a site's own policy. The rest are the mechanics the
halves are built from: Flower's DP wrappers, calibrated (`central`), Opacus's DP-SGD (`dp_sgd`),
the percentile filter (`percentile`) and SecAgg+ (`secagg`).
"""
