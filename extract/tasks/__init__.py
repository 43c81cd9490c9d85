"""Binary next-token tasks: examples, and the two-way loss used to score any model on them."""
from extract.tasks.examples import TaskExample, two_way_scores

__all__ = ["TaskExample", "two_way_scores"]
