"""Circuits: node sites as hooks on unmodified HF modules, node masks with mean ablation, pruning,
edges counted from the weights, checks, circuit files, and the prune stage that runs them all.

Data flows one way: sites -> masks -> prune -> checks / edges -> find (one task, one model) ->
files and stage (every task, every model, written to OUTPUT_DIR/circuits/).
"""
