"""Circuits: node sites as hooks on unmodified HF modules, node masks, mean ablation, edges.

Groundwork for circuit pruning: the pieces here are tested on their own and not yet wired into
the command line.
"""
