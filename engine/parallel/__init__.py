"""Tensor parallelism: one worker is a group of ranks, each holding a slice of the heads and of
every MLP's intermediate dimension; rank 0 (the leader) is the worker everyone else sees."""
