"""One model shared by the instances of a consumer group, with Kafka as the engine.

Every instance is a :class:`~streamem.sharing.worker.Worker`: it answers its partitions' points
with the newest published model and sends statistic deltas to a one-partition stats topic. The
instance that owns that partition in the group ``<group_id>.leader`` is the
:class:`~streamem.sharing.leader.Leader`: it folds the deltas in log order and publishes its
full state on a compacted state topic under one key, in a transaction with its stats offsets
(a new leader's ``init_transactions`` fences the old one).
"""
